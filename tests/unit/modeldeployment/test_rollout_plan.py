"""The canary rollout's state machine and builders (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from kubeforge.api.modeldeployment import ModelDeploymentSpec
from kubeforge.api.rollout import Analysis, Rollout, RolloutStep
from kubeforge.modeldeployment import rollout as ro
from kubeforge.modeldeployment import rollout_build as rb
from kubeforge.modeldeployment.analysis import Counters, decide
from kubeforge.settings import Settings
from pydantic import ValidationError

STEPS = [RolloutStep(shadow=100, pause="1m"), RolloutStep(weight=50, pause="1m")]
ROLLOUT = Rollout(strategy="Canary", steps=STEPS,
                  analysis=Analysis(min_requests=10, min_agreement=0.9))
T0, T1, T2 = "2026-12-06T10:00:00Z", "2026-12-06T10:00:30Z", "2026-12-06T10:01:05Z"
FAST = ((0.01, 100.0), (float("inf"), 100.0))


def obs(**kw: Any) -> ro.Observed:
    base: dict[str, Any] = dict(stable_uri="file:///m/a.onnx", stable_sha256=None,
                                candidate_uri="file:///m/b.onnx", candidate_sha256="bb",
                                candidate_ready=1)
    return ro.Observed(**{**base, **kw})


def good(elapsed_to: str) -> Any:
    return decide(Counters(requests=100, latency=FAST, agreed=100),
                  Counters(requests=100, latency=FAST), ROLLOUT.analysis,
                  elapsed_seconds=ro.seconds_since(T0, elapsed_to), pause_seconds=60)


def test_walks_every_step_then_promotes() -> None:
    p = ro.plan(ROLLOUT, None, obs(), T0)
    assert p.status["phase"] == "Progressing" and p.status["step"] == 0
    assert p.step is STEPS[0] and p.new_window and p.run_candidate and not p.promote
    assert [e[1] for e in p.events] == ["RolloutStarted", "RolloutStep"]
    # healthy but the pause has not passed
    p = ro.plan(ROLLOUT, p.status, obs(decision=good(T1)), T1)
    assert p.status["step"] == 0 and p.status["analysis"]["verdict"] == "Continue"
    p = ro.plan(ROLLOUT, p.status, obs(decision=good(T2)), T2)
    assert p.status["step"] == 1 and p.step is STEPS[1] and p.new_window
    assert p.status["stepStartedAt"] == T2
    p = ro.plan(ROLLOUT, p.status, obs(decision=good("2026-12-06T10:03:00Z")),
                "2026-12-06T10:03:00Z")
    assert p.status["phase"] == "Promoted" and p.promote
    assert p.events[-1][1] == "RolloutPromoted"


def test_low_agreement_rolls_back_and_stays_rolled_back() -> None:
    p = ro.plan(ROLLOUT, None, obs(), T0)
    bad = decide(Counters(requests=100, latency=FAST, agreed=10, disagreed=90),
                 Counters(requests=100, latency=FAST), ROLLOUT.analysis,
                 elapsed_seconds=30, pause_seconds=60)
    p = ro.plan(ROLLOUT, p.status, obs(decision=bad), T1)
    assert p.status["phase"] == "RolledBack" and p.status["reason"] == "LowAgreement"
    assert not p.run_candidate and p.events[0][0] == "Warning"
    again = ro.plan(ROLLOUT, p.status, obs(), T2)
    assert again.status["phase"] == "RolledBack" and not again.run_candidate
    retry = ro.plan(ROLLOUT, p.status, obs(command="retry"), T2)
    assert retry.status["phase"] == "Progressing" and retry.command_done


def test_without_auto_rollback_a_breach_pauses() -> None:
    manual = ROLLOUT.model_copy(update={"auto_rollback": False})
    p = ro.plan(manual, None, obs(), T0)
    bad = decide(Counters(requests=100, latency=FAST, agreed=10, disagreed=90),
                 Counters(requests=100, latency=FAST), manual.analysis,
                 elapsed_seconds=30, pause_seconds=60)
    p = ro.plan(manual, p.status, obs(decision=bad), T1)
    assert p.status["phase"] == "Paused" and p.run_candidate
    assert "kubeforge.io/rollout=promote" in p.status["message"]
    p = ro.plan(manual, p.status, obs(command="abort"), T2)
    assert p.status["phase"] == "RolledBack" and p.status["reason"] == "Aborted"


def test_annotation_promotes_at_once_and_a_failing_candidate_rolls_back() -> None:
    p = ro.plan(ROLLOUT, None, obs(), T0)
    promoted = ro.plan(ROLLOUT, p.status, obs(command="promote"), T1)
    assert promoted.status["phase"] == "Promoted" and promoted.promote and promoted.command_done
    failing = ro.plan(ROLLOUT, p.status, obs(candidate_ready=0,
                                              candidate_problem="pod x: CrashLoopBackOff"), T1)
    assert failing.status["phase"] == "RolledBack"
    assert failing.status["reason"] == "CandidateFailed"


def test_waits_for_the_candidate_before_the_first_step() -> None:
    p = ro.plan(ROLLOUT, None, obs(candidate_ready=0), T0)
    assert p.step is None and p.run_candidate and "stepStartedAt" not in p.status
    p = ro.plan(ROLLOUT, p.status, obs(), T1)
    assert p.step is STEPS[0] and p.status["stepStartedAt"] == T1


def test_paused_holds_the_step() -> None:
    paused = ROLLOUT.model_copy(update={"paused": True})
    p = ro.plan(paused, None, obs(), T0)
    p = ro.plan(paused, p.status, obs(decision=good(T2)), T2)
    assert p.status["phase"] == "Paused" and p.status["step"] == 0


@pytest.mark.parametrize(
    ("step", "replicas", "want"),
    [
        (RolloutStep(shadow=100), 2, rb.Split(None, 2, 0, 100, False)),
        (RolloutStep(weight=10), 1, rb.Split(1, 1, 50, 0, True)),
        (RolloutStep(weight=50, shadow=100), 4, rb.Split(2, 2, 50, 100, True)),
        (RolloutStep(weight=25), 4, rb.Split(3, 1, 25, 0, True)),
    ],
)
def test_split_by_replica_counts(step: RolloutStep, replicas: int, want: rb.Split) -> None:
    assert rb.split(step, replicas, autoscaled=False) == want


def test_candidate_children_and_stable_flags() -> None:
    settings = Settings()
    md = {"apiVersion": "kubeforge.io/v1alpha1", "kind": "ModelDeployment",
          "metadata": {"name": "digits", "namespace": "ml", "uid": "u1"}}
    spec = ModelDeploymentSpec.model_validate(
        {"model": {"uri": "file:///m/b.onnx"}, "rollout": {"strategy": "Canary"}})
    shadowing = rb.candidate_deployment(md, spec, settings, "file:///m/b.onnx", replicas=1,
                                        answering=False)
    labels = shadowing.manifest["spec"]["template"]["metadata"]["labels"]
    assert shadowing.manifest["metadata"]["name"] == "digits-candidate"
    assert settings.label("modeldeployment") not in labels  # the Service does not select it
    answering = rb.candidate_deployment(md, spec, settings, "file:///m/b.onnx", replicas=1,
                                        answering=True)
    assert answering.manifest["spec"]["template"]["metadata"]["labels"][
        settings.label("modeldeployment")] == "digits"
    assert answering.hash != shadowing.hash
    assert rb.candidate_service(md, settings).manifest["spec"]["selector"] == {
        settings.label("candidate-of"): "digits", settings.label("kind"): "ModelDeployment"}
    args = rb.shadow_args(spec, "digits", "ml", 100)
    assert args[:2] == ["--shadow-url", "http://digits-candidate.ml.svc.cluster.local:8080"]
    long = "x" * 63
    assert len(rb.candidate_name(long)) == 63 and rb.candidate_name(long).endswith("-candidate")


def test_spec_errors_name_the_field() -> None:
    with pytest.raises(ValidationError, match="steps need strategy Canary"):
        Rollout.model_validate({"steps": [{"shadow": 100}]})
    with pytest.raises(ValidationError, match="a step needs shadow"):
        Rollout.model_validate({"strategy": "Canary", "steps": [{"pause": "1m"}]})
    with pytest.raises(ValidationError, match="pause"):
        Rollout.model_validate({"strategy": "Canary", "steps": [{"weight": 5, "pause": "2 min"}]})

"""Argo CD health checks (charts/kubeforge/argocd/health/*.lua) in a real Lua VM (lupa)."""

from __future__ import annotations

from typing import Any

import pytest
from kubeforge_cluster.argo_health import health


def obj(phase: str | None, gen: int = 1, observed: int | None = 1, **status: Any) -> dict:
    o: dict[str, Any] = {"metadata": {"name": "x", "generation": gen}}
    if phase is not None:
        o["status"] = {"phase": phase, **status}
        if observed is not None:
            o["status"]["observedGeneration"] = observed
    return o


@pytest.mark.parametrize(
    ("kind", "phase", "expected"),
    [
        ("TrainingJob", "Pending", "Progressing"),
        ("TrainingJob", "Queued", "Progressing"),
        ("TrainingJob", "Running", "Progressing"),
        ("TrainingJob", "Succeeded", "Healthy"),
        ("TrainingJob", "Failed", "Degraded"),
        ("TrainingJob", "Suspended", "Suspended"),
        ("TuningStudy", "Pending", "Progressing"),
        ("TuningStudy", "Running", "Progressing"),
        ("TuningStudy", "Succeeded", "Healthy"),
        ("TuningStudy", "Failed", "Degraded"),
        ("ModelDeployment", "Pending", "Progressing"),
        ("ModelDeployment", "Loading", "Progressing"),
        ("ModelDeployment", "Progressing", "Progressing"),
        ("ModelDeployment", "Ready", "Healthy"),
        ("ModelDeployment", "Degraded", "Degraded"),
        ("ModelDeployment", "Failed", "Degraded"),
    ],
)
def test_phase_maps_to_argo_status(kind: str, phase: str, expected: str) -> None:
    assert health(kind, obj(phase))["status"] == expected


def test_every_api_phase_is_covered() -> None:
    from kubeforge.api import ServingPhase, TrainingPhase, TuningPhase

    for kind, phases in (
        ("TrainingJob", TrainingPhase),
        ("TuningStudy", TuningPhase),
        ("ModelDeployment", ServingPhase),
    ):
        for p in phases:
            assert health(kind, obj(p.value))["status"] != "Unknown", (kind, p)


@pytest.mark.parametrize("kind", ["TrainingJob", "TuningStudy", "ModelDeployment"])
def test_no_status_yet_is_progressing(kind: str) -> None:
    h = health(kind, obj(None))
    assert h["status"] == "Progressing"
    assert "operator" in h["message"]


@pytest.mark.parametrize("kind", ["TrainingJob", "TuningStudy", "ModelDeployment"])
def test_stale_generation_is_progressing_even_when_the_phase_is_final(kind: str) -> None:
    final = {"TrainingJob": "Succeeded", "TuningStudy": "Succeeded", "ModelDeployment": "Ready"}
    h = health(kind, obj(final[kind], gen=3, observed=2))
    assert h["status"] == "Progressing"
    assert "generation 3" in h["message"]
    assert health(kind, obj(final[kind], gen=3, observed=3))["status"] == "Healthy"


@pytest.mark.parametrize("kind", ["TrainingJob", "TuningStudy", "ModelDeployment"])
def test_unknown_phase_is_unknown(kind: str) -> None:
    assert health(kind, obj("Exploded"))["status"] == "Unknown"


def test_messages_carry_the_operator_message_or_a_useful_summary() -> None:
    h = health("TrainingJob", obj("Failed", message="pod exited with code 2: bad config"))
    assert h == {"status": "Degraded", "message": "pod exited with code 2: bad config"}
    h = health(
        "TrainingJob",
        obj(
            "Failed",
            conditions=[{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}],
        ),
    )
    assert h["message"] == "BackoffLimitExceeded"
    h = health("TrainingJob", obj("Succeeded", artifacts={"model": "s3://b/m/model.onnx"}))
    assert h["message"] == "Trained: s3://b/m/model.onnx"
    h = health("TrainingJob", obj("Running", progress={"epoch": 4, "metrics": {"loss": 0.1}}))
    assert h["message"] == "Running: epoch 4"
    h = health("TuningStudy", obj("Running", progress="3/8"))
    assert h["message"] == "Running: 3/8 trials"
    h = health("ModelDeployment", obj("Progressing", replicas={"desired": 3, "ready": 1}))
    assert h["message"] == "Progressing: 1/3 replicas ready"


def test_observed_generation_absent_does_not_block() -> None:
    assert health("TrainingJob", obj("Succeeded", observed=None))["status"] == "Healthy"


def test_canary_rollout_health() -> None:
    """Progressing during a rollout, Suspended while it is paused, Degraded after a rollback
    (the operator's phase), Healthy after promotion."""
    during = obj("Progressing", message="canary: healthy", rollout={"phase": "Progressing"})
    assert health("ModelDeployment", during)["status"] == "Progressing"
    paused = obj("Progressing", message="canary: paused", rollout={"phase": "Paused"})
    assert health("ModelDeployment", paused) == {"status": "Suspended",
                                                 "message": "canary: paused"}
    rolled_back = obj("Degraded", message="rollout of s3://m/v2 rolled back: LowAgreement",
                      rollout={"phase": "RolledBack"})
    assert health("ModelDeployment", rolled_back)["status"] == "Degraded"
    promoted = obj("Ready", rollout={"phase": "Promoted"})
    assert health("ModelDeployment", promoted)["status"] == "Healthy"

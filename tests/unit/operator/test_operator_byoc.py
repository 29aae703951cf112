"""Bring your own code: a trial's objective reaches kubeforge-report, `$(HP_*)` expands the way
the kubelet expands it, exit codes 2/3 mean something only under a collector, and an image that
writes no model succeeds with its metrics."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kf_operator_helpers import SETTINGS, parsed, tj
from kubeforge.api.trainingjob import TrainingJobStatus
from kubeforge.api.tuningstudy import TuningStudySpec
from kubeforge.pod import expand_env_refs, restricted_violations
from kubeforge.trainingjob import build as tjbuild
from kubeforge.trainingjob.indexed import slim_tj
from kubeforge.trainingjob.status import compute_status
from kubeforge.tuningstudy import build as tb

T0, T1 = "2026-11-27T10:00:00Z", "2026-11-27T10:01:00Z"

KATIB_TEMPLATE: dict[str, Any] = {
    "image": "registry.example/katib-mnist:1",
    "command": ["python3", "/app/train.py"],
    "args": ["--lr=$(HP_LR)", "--layers=$(HP_NUM_LAYERS)", "--literal=$$(HP_LR)", "$(NOPE)"],
    "hyperparameters": {"epochs": 2},
    "metricsCollector": {"kind": "StdOut"},
    "pod": {
        "serviceAccountName": "trainer-sa",
        "annotations": {"sidecar.istio.io/inject": "false"},
        "env": [{"name": "DATA_DIR", "value": "/data"}],
        "volumes": [{"name": "cfg", "mountPath": "/etc/cfg", "configMapName": "train-cfg"}],
        "imagePullSecrets": ["regcred"],
    },
}


def study(template: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {"name": "katib", "namespace": "ml", "uid": "u-1", "generation": 1},
        "spec": {
            "objective": {"metric": "accuracy", "direction": "maximize"},
            "searchSpace": {
                "lr": {"type": "float", "low": 0.01, "high": 0.1},
                "num-layers": {"type": "int", "low": 1, "high": 4},
            },
            "algorithm": {"name": "random", "seed": 1},
            "trialTemplate": {"spec": template},
        },
    }


def trial_job(template: dict[str, Any], params: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The study's trial TrainingJob (as the API server would hold it) and its built children."""
    s = study(template)
    m = tb.trial_manifest(s, TuningStudySpec.model_validate(s["spec"]), 0, params)
    m["metadata"]["uid"] = "uid-t0"
    m["metadata"]["generation"] = 1
    return m, tjbuild.build(m, parsed(m), SETTINGS)


def container(job: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = job["spec"]["template"]["spec"]["containers"][0]
    return c


# ---------------------------------------------------------------- the trial's objective
def test_trial_tells_kubeforge_report_the_objective() -> None:
    m, d = trial_job(KATIB_TEMPLATE, {"lr": 0.05, "num-layers": 3})
    assert m["metadata"]["annotations"][tb.OBJECTIVE_METRIC] == "accuracy"
    cmd = container(d.job)["command"]
    i = cmd.index("--")
    assert cmd[:i] == [
        "python3",
        "/kubeforge/bin/kubeforge-report.pyz",
        "--collector",
        "stdout",
        "--format",
        "text",
        "--metric=accuracy",
    ]
    assert cmd[i + 1 :] == ["python3", "/app/train.py", *KATIB_TEMPLATE["args"]]


def test_multi_objective_trial_collects_every_objective() -> None:
    s = study(KATIB_TEMPLATE)
    s["spec"].pop("objective")
    s["spec"]["objectives"] = [
        {"metric": "accuracy", "direction": "maximize"},
        {"metric": "onnx_latency_ms"},
    ]
    m = tb.trial_manifest(s, TuningStudySpec.model_validate(s["spec"]), 0, {"lr": 0.05})
    m["metadata"].update(uid="uid-t0", generation=1)
    assert m["metadata"]["annotations"][tb.OBJECTIVE_METRIC] == "accuracy,onnx_latency_ms"
    cmd = container(tjbuild.build(m, parsed(m), SETTINGS).job)["command"]
    flags = [a for a in cmd[: cmd.index("--")] if a.startswith("--metric")]
    assert flags == ["--metric=accuracy", "--metric=onnx_latency_ms"]  # the first is reported


def test_the_operator_keeps_the_objective_annotation_in_its_index() -> None:
    m, d = trial_job(KATIB_TEMPLATE, {"lr": 0.05, "num-layers": 3})
    body = {
        **m,
        "metadata": {
            **m["metadata"],
            "annotations": {
                **m["metadata"]["annotations"],
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
            },
        },
    }
    slim = slim_tj(body)
    assert slim["metadata"]["annotations"] == {tb.OBJECTIVE_METRIC: "accuracy"}
    assert tjbuild.build(slim, parsed(slim), SETTINGS).job == d.job


def test_no_objective_without_annotation_or_with_the_builtin_trainer() -> None:
    plain = tj(KATIB_TEMPLATE)
    cmd = container(tjbuild.build(plain, parsed(plain), SETTINGS).job)["command"]
    assert not any(a.startswith("--metric") for a in cmd)
    # a trial of the built-in trainer: nothing wraps it, the annotation is harmless
    builtin = {"model": {"recipe": "mlp-classifier"}, "dataset": {"uri": "builtin://digits"}}
    _, d = trial_job(builtin, {"lr": 0.05, "num-layers": 3})
    assert container(d.job)["command"] == ["kubeforge-trainer"]
    assert "initContainers" not in d.job["spec"]["template"]["spec"]


# ---------------------------------------------------------------- $(HP_*) as the kubelet does
def test_hp_env_and_kubelet_expansion_of_the_trial_command() -> None:
    _, d = trial_job(KATIB_TEMPLATE, {"lr": 0.05, "num-layers": 3})
    c = container(d.job)
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    assert (env["HP_LR"], env["HP_NUM_LAYERS"], env["HP_EPOCHS"]) == ("0.05", "3", "2")
    assert env["DATA_DIR"] == "/data"
    expanded = [expand_env_refs(a, env) for a in c["command"]]
    # defined variables expand, `$$` escapes, an undefined reference stays as written
    assert expanded[-4:] == ["--lr=0.05", "--layers=3", "--literal=$(HP_LR)", "$(NOPE)"]


@pytest.mark.parametrize(
    ("text", "env", "want"),
    [
        ("$(A)$(B)", {"A": "1", "B": "2"}, "12"),
        ("$$(A)", {"A": "1"}, "$(A)"),
        ("$$$(A)", {"A": "1"}, "$1"),
        ("$(A", {"A": "1"}, "$(A"),
        ("a$b", {}, "a$b"),
        ("$(MISSING)", {}, "$(MISSING)"),
    ],
)
def test_expansion_rule(text: str, env: dict[str, str], want: str) -> None:
    assert expand_env_refs(text, env) == want


def test_trial_pod_carries_the_pod_settings() -> None:
    _, d = trial_job(KATIB_TEMPLATE, {"lr": 0.05, "num-layers": 3})
    tmpl = d.job["spec"]["template"]
    pod = tmpl["spec"]
    assert tmpl["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert pod["serviceAccountName"] == "trainer-sa"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert {"name": "cfg", "configMap": {"name": "train-cfg"}} in pod["volumes"]
    c = container(d.job)
    assert any(m["name"] == "cfg" and m["mountPath"] == "/etc/cfg" for m in c["volumeMounts"])
    assert [i["name"] for i in pod["initContainers"]] == ["kubeforge-report"]
    assert restricted_violations(pod) == []


# ---------------------------------------------------------------- status of own code
def _job(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "digits", "annotations": {}}, "spec": {}, "status": status}


def _pod(phase: str, code: int, message: str = "", stop: str | None = None) -> dict[str, Any]:
    ann = {"batch.kubernetes.io/job-completion-index": "0"}
    if stop:
        ann["kubeforge.io/stop"] = stop
    term = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "message": message}
    return {
        "metadata": {"name": "digits-0-abc", "annotations": ann, "labels": {}},
        "status": {
            "phase": phase,
            "containerStatuses": [{"name": "trainer", "state": {"terminated": term}}],
        },
    }


def status(spec: dict[str, Any], job: dict[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any]:
    obj = tj(spec)
    st = compute_status(obj, parsed(obj), job, pods, now=T1)
    TrainingJobStatus.model_validate(st)
    return st


FAILED = {
    "failed": 1,
    "conditions": [
        {
            "type": "Failed",
            "status": "True",
            "reason": "BackoffLimitExceeded",
            "message": "Job has reached the specified backoff limit",
        }
    ],
}
COLLECTED = {
    "image": "me/t:1",
    "command": ["python3", "t.py"],
    "metricsCollector": {"kind": "StdOut"},
}
OWN = {"image": "me/t:1", "command": ["python3", "t.py"]}


@pytest.mark.parametrize(("code", "reason"), [(2, "BadConfiguration"), (3, "Stopped")])
def test_exit_codes_2_and_3_under_a_collector(code: int, reason: str) -> None:
    st = status(COLLECTED, _job(**FAILED), [_pod("Failed", code, stop="pruned")])
    assert st["phase"] == "Failed"
    assert [c["reason"] for c in st["conditions"] if c["type"] == "Failed"] == [reason]
    rules = tjbuild.build(tj(COLLECTED), parsed(tj(COLLECTED)), SETTINGS).job["spec"][
        "podFailurePolicy"
    ]["rules"]
    assert rules[0]["onExitCodes"]["values"] == [2, 3]


@pytest.mark.parametrize("code", [2, 3])
def test_exit_codes_2_and_3_of_own_code_are_plain_errors(code: int) -> None:
    st = status(OWN, _job(**FAILED), [_pod("Failed", code, message="Traceback ...")])
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "Error"
    assert f"exited with code {code}" in failed["message"]
    rules = tjbuild.build(tj(OWN), parsed(tj(OWN)), SETTINGS).job["spec"]["podFailurePolicy"]
    assert [r["action"] for r in rules["rules"]] == ["Ignore"]


NO_MODEL = json.dumps({"metrics": {"accuracy": 0.8, "loss": 0.31}, "artifacts": {}})
DONE = {
    "succeeded": 1,
    "completionTime": T1,
    "conditions": [{"type": "Complete", "status": "True"}],
}


@pytest.mark.parametrize("spec", [COLLECTED, OWN])
def test_image_without_model_succeeds_with_metrics_and_no_model(spec: dict[str, Any]) -> None:
    st = status(spec, _job(**DONE), [_pod("Succeeded", 0, NO_MODEL)])
    assert st["phase"] == "Succeeded"
    assert st["metrics"] == {"accuracy": 0.8, "loss": 0.31}
    assert "artifacts" not in st
    assert st["progress"] == {"metrics": {"accuracy": 0.8, "loss": 0.31}}

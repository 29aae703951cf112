"""ModelDeployment status over a table of observed states (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from kubeforge.api.modeldeployment import ModelDeploymentSpec
from kubeforge.conditions import get_condition
from kubeforge.modeldeployment.resolve import UNSUPPORTED, WAITING, Resolved
from kubeforge.modeldeployment.status import compute_status, pod_problem

NOW = "2030-01-01T00:00:00Z"
URI = "s3://b/m/"
OK = Resolved(uri=URI, sha256="feed")


def md(status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": "digits", "namespace": "ml", "generation": 2}}
    if status is not None:
        obj["status"] = status
    return obj


def spec(**kw: Any) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate({"model": {"uri": URI}, **kw})


def deployment(
    desired: int = 1,
    ready: int = 0,
    updated: int | None = None,
    total: int | None = None,
    rev: str = "1",
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    updated = desired if updated is None else updated
    total = max(desired, updated) if total is None else total
    return {
        "metadata": {"generation": 1, "annotations": {"deployment.kubernetes.io/revision": rev}},
        "spec": {"replicas": desired},
        "status": {
            "observedGeneration": 1,
            "replicas": total,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "conditions": conditions or [],
        },
    }


def rs(rev: str, h: str) -> dict[str, Any]:
    return {
        "metadata": {
            "annotations": {"deployment.kubernetes.io/revision": rev},
            "labels": {"pod-template-hash": h},
        }
    }


def pod(
    name: str,
    *,
    h: str = "new",
    ready: bool = False,
    running: bool = True,
    waiting: str | None = None,
    last_message: str = "",
    unschedulable: bool = False,
) -> dict[str, Any]:
    state: dict[str, Any] = {"running": {}} if running else {}
    cs: dict[str, Any] = {"name": "server", "state": state, "restartCount": 0}
    if waiting:
        cs["state"] = {"waiting": {"reason": waiting, "message": "back-off 40s"}}
        cs["restartCount"] = 4
        cs["lastState"] = {
            "terminated": {"exitCode": 1, "reason": "Error", "message": last_message}
        }
    conds = [{"type": "Ready", "status": "True" if ready else "False"}]
    if unschedulable:
        conds.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes: insufficient nvidia.com/gpu",
            }
        )
        cs = {}
    return {
        "metadata": {"name": name, "labels": {"pod-template-hash": h}},
        "status": {
            "phase": "Running" if running else "Pending",
            "conditions": conds,
            "containerStatuses": [cs] if cs else [],
        },
    }


def cond(st: dict[str, Any], t: str) -> dict[str, Any]:
    c = get_condition(st["conditions"], t)
    assert c is not None, t
    return c


CASES: list[tuple[str, Any, dict[str, Any] | None, list[dict[str, Any]], str, dict[str, str]]] = [
    # id, resolved, deployment, pods, phase, {condition: status/reason}
    (
        "waiting-for-model",
        Resolved(reason=WAITING, message="waiting for TrainingJob t"),
        None,
        [],
        "Pending",
        {"ModelLoaded": "False/WaitingForModel", "Ready": "False/WaitingForModel"},
    ),
    (
        "non-onnx",
        Resolved(reason=UNSUPPORTED, message="use torch.onnx.export"),
        None,
        [],
        "Failed",
        {"ModelLoaded": "False/UnsupportedModelFormat"},
    ),
    ("creating", OK, None, [], "Pending", {"Progressing": "True/Creating"}),
    (
        "pods-not-started",
        OK,
        deployment(),
        [pod("a", running=False)],
        "Pending",
        {"Ready": "False/ReplicasNotReady"},
    ),
    (
        "unschedulable",
        OK,
        deployment(),
        [pod("a", running=False, unschedulable=True)],
        "Pending",
        {"Ready": "False/ReplicasNotReady"},
    ),
    (
        "loading",
        OK,
        deployment(),
        [pod("a")],
        "Loading",
        {"ModelLoaded": "False/Loading", "Ready": "False/ReplicasNotReady"},
    ),
    (
        "ready",
        OK,
        deployment(ready=1),
        [pod("a", ready=True)],
        "Ready",
        {
            "ModelLoaded": "True/Loaded",
            "Ready": "True/MinimumReplicasAvailable",
            "Progressing": "False/Complete",
        },
    ),
    (
        "crash-loop",
        OK,
        deployment(),
        [pod("a", waiting="CrashLoopBackOff", last_message="ModelLoadError: no model.onnx")],
        "Degraded",
        {"ModelLoaded": "False/CrashLoopBackOff", "Ready": "False/CrashLoopBackOff"},
    ),
    (
        "image-pull",
        OK,
        deployment(),
        [pod("a", running=False, waiting="ImagePullBackOff")],
        "Degraded",
        {"Ready": "False/ImagePullBackOff"},
    ),
    (
        "one-of-three-crashing",
        OK,
        deployment(desired=3, ready=2),
        [pod("a", ready=True), pod("b", ready=True), pod("c", waiting="CrashLoopBackOff")],
        "Degraded",
        {"ModelLoaded": "True/Loaded", "Ready": "True/CrashLoopBackOff"},
    ),
    (
        "rolling-update",
        OK,
        deployment(desired=3, ready=3, updated=1, total=4, rev="2"),
        [
            pod("o1", h="old", ready=True),
            pod("o2", h="old", ready=True),
            pod("o3", h="old", ready=True),
            pod("n1", h="new"),
        ],
        "Progressing",
        {"Ready": "True/ReplicasReady", "Progressing": "True/RollingUpdate"},
    ),
    (
        "old-pods-crash-are-not-the-news",
        OK,
        deployment(desired=1, ready=1, updated=1, total=2, rev="2"),
        [pod("o1", h="old", waiting="CrashLoopBackOff"), pod("n1", h="new", ready=True)],
        "Progressing",
        {"ModelLoaded": "True/Loaded", "Progressing": "True/RollingUpdate"},
    ),
    (
        "scaling-up",
        OK,
        deployment(desired=3, ready=1),
        [pod("a", ready=True), pod("b"), pod("c")],
        "Progressing",
        {"Progressing": "True/ScalingUp", "Ready": "False/ReplicasNotReady"},
    ),
    (
        "deadline-exceeded",
        OK,
        deployment(
            conditions=[
                {
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": "ReplicaSet x has timed out progressing.",
                }
            ]
        ),
        [pod("a")],
        "Failed",
        {"Progressing": "False/ProgressDeadlineExceeded"},
    ),
    (
        "scaled-to-zero",
        OK,
        deployment(desired=0),
        [],
        "Pending",
        {"Ready": "False/ScaledToZero"},
    ),
    (
        "new-model-waiting-keeps-serving",
        Resolved(reason=WAITING, message="waiting for TrainingJob t2"),
        deployment(ready=1),
        [pod("a", ready=True)],
        "Progressing",
        {"ModelLoaded": "False/WaitingForModel", "Ready": "True/MinimumReplicasAvailable"},
    ),
    (
        "new-model-unsupported-keeps-serving",
        Resolved(reason=UNSUPPORTED, message="use skl2onnx"),
        deployment(ready=1),
        [pod("a", ready=True)],
        "Degraded",
        {"ModelLoaded": "False/UnsupportedModelFormat", "Ready": "True/MinimumReplicasAvailable"},
    ),
]


@pytest.mark.parametrize(
    "resolved,dep,pods,phase,conds", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_status_table(
    resolved: Resolved,
    dep: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    phase: str,
    conds: dict[str, str],
) -> None:
    rsets = (
        [rs("1", "old"), rs("2", "new")]
        if dep and dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
        else [rs("1", "new")]
    )
    st = compute_status(
        md(),
        spec(replicas=dep["spec"]["replicas"] if dep else 1),
        resolved,
        dep,
        pods,
        now=NOW,
        replica_sets=rsets,
        served_uri=URI if dep else None,
    )
    assert st["phase"] == phase, st["message"]
    for t, expect in conds.items():
        c = cond(st, t)
        assert f"{c['status']}/{c['reason']}" == expect, (t, c)
        assert c["observedGeneration"] == 2
    assert st["url"] == "http://digits.ml.svc.cluster.local:8080/v2/models/digits"
    assert st["observedGeneration"] == 2
    assert {c["type"] for c in st["conditions"]} == {"Ready", "ModelLoaded", "Progressing"}


def test_crash_loop_message_carries_the_termination_message() -> None:
    p = pod("srv-1", waiting="CrashLoopBackOff", last_message="ModelLoadError: s3://b/m/: 403")
    problem = pod_problem(p)
    assert problem is not None
    reason, message = problem
    assert reason == "CrashLoopBackOff"
    assert "srv-1" in message and "403" in message and "restarted 4 times" in message
    st = compute_status(md(), spec(), OK, deployment(), [p], now=NOW, served_uri=URI)
    assert "403" in st["message"] and "403" in cond(st, "Ready")["message"]


def test_replica_counts_and_model() -> None:
    st = compute_status(
        md(),
        spec(replicas=3),
        OK,
        deployment(desired=3, ready=2, updated=3),
        [pod("a", ready=True), pod("b", ready=True), pod("c")],
        now=NOW,
        served_uri=URI,
    )
    assert st["replicas"] == {"desired": 3, "ready": 2, "updated": 3}
    assert st["model"] == {"uri": URI, "sha256": "feed", "inputs": [], "outputs": []}


def test_sha256_only_for_the_model_being_served() -> None:
    st = compute_status(
        md(), spec(), OK, deployment(ready=1), [pod("a", ready=True)], now=NOW, served_uri="s3://x/"
    )
    assert st["model"] == {"uri": "s3://x/", "inputs": [], "outputs": []}


def test_autoscaled_desired_comes_from_the_deployment() -> None:
    s = spec(autoscaling={"minReplicas": 2, "maxReplicas": 5})
    st = compute_status(md(), s, OK, deployment(desired=4, ready=4), [], now=NOW, served_uri=URI)
    assert st["replicas"]["desired"] == 4 and st["phase"] == "Ready"


def test_transition_time_kept_when_status_unchanged() -> None:
    first = compute_status(md(), spec(), OK, deployment(ready=1), [], now=NOW, served_uri=URI)
    later = compute_status(
        md(first), spec(), OK, deployment(ready=1), [], now="2031-01-01T00:00:00Z", served_uri=URI
    )
    assert later == first

"""Observed Job + pods → TrainingJob status: table of cases, including Kueue's suspend flips."""

from __future__ import annotations

import json
from typing import Any

from kf_operator_helpers import SETTINGS, parsed, tj, with_spec
from kubeforge.api.trainingjob import TrainingJobStatus
from kubeforge.apply import merge_patch
from kubeforge.conditions import get_condition
from kubeforge.progress import ProgressReports
from kubeforge.trainingjob.build import build
from kubeforge.trainingjob.status import compute_status

T0, T1, T2, T3 = (f"2026-11-27T10:0{i}:00Z" for i in range(4))


def job(suspend: bool = False, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "digits", "annotations": {}}, "spec": {"suspend": suspend},
            "status": status}


def pod(index: int, phase: str = "Running", *, exit_code: int | None = None, message: str = "",
        reason: str = "", progress: dict[str, Any] | None = None, last: bool = False,
        name: str | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    ann = {"batch.kubernetes.io/job-completion-index": str(index), **(annotations or {})}
    cs: dict[str, Any] = {"name": "trainer", "state": {"running": {}}}
    if exit_code is not None:
        term = {"exitCode": exit_code, "message": message, "reason": reason or ("Completed" if exit_code == 0 else "Error")}
        if last:
            cs["lastState"] = {"terminated": term}
        else:
            cs["state"] = {"terminated": term}
    out: dict[str, Any] = {"metadata": {"name": name or f"digits-{index}-abc", "annotations": ann, "labels": {}},
                           "status": {"phase": phase, "containerStatuses": [cs]}}
    if progress is not None:
        out["report"] = progress  # what this pod POSTed to the progress endpoint (not a pod field)
    return out


def reported(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The endpoint's latest report of these pods (rank 0 wins, newest first)."""
    reports = ProgressReports()
    for p in pods:
        if "report" in p:
            index = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
            reports.record(("ml", "digits"), p["report"], int(index))
    return reports.latest(("ml", "digits"))


def status_of(obj: dict[str, Any], j: dict[str, Any] | None, pods: list[dict[str, Any]], now: str,
              workload: dict[str, Any] | None = None) -> dict[str, Any]:
    st = compute_status(obj, parsed(obj), j, pods, now=now, workload=workload, reported=reported(pods))
    TrainingJobStatus.model_validate(st)  # always the API's shape
    return st


def step(obj: dict[str, Any], j: dict[str, Any] | None, pods: list[dict[str, Any]], now: str,
         workload: dict[str, Any] | None = None) -> dict[str, Any]:
    """One reconcile: compute and 'write' the status onto obj."""
    obj["status"] = status_of(obj, j, pods, now, workload)
    return obj["status"]


def cond(st: dict[str, Any], t: str) -> dict[str, Any]:
    c = get_condition(st["conditions"], t)
    assert c is not None, t
    return c


RESULT = {"metrics": {"accuracy": 0.97, "val_loss": 0.08},
          "artifacts": {"model": "file:///a/model.onnx", "checkpoint": "file:///a/ckpt.pt",
                        "sha256": "ab" * 32, "bytes": 1234}}


def test_one_node_cpu_lifecycle() -> None:
    obj = tj(with_spec())
    st = step(obj, None, [], T0)
    assert st["phase"] == "Pending" and cond(st, "Created")["status"] == "False"
    st = step(obj, job(), [], T0)
    assert st["phase"] == "Pending" and cond(st, "Created")["status"] == "True"
    created_at = cond(st, "Created")["lastTransitionTime"]
    st = step(obj, job(active=1, startTime=T1), [pod(0, progress={"seq": 3, "epoch": 2, "step": 40, "metrics": {"loss": 0.5}, "time": 5})], T1)
    assert st["phase"] == "Running" and cond(st, "Running")["status"] == "True"
    assert st["startTime"] == T1
    assert st["progress"] == {"epoch": 2, "step": 40, "metrics": {"loss": 0.5}}
    assert st["nodes"] == {"active": 1, "succeeded": 0, "failed": 0}
    # nothing changed → the same status → no write
    again = status_of(obj, job(active=1, startTime=T1), [pod(0, progress={"seq": 3, "epoch": 2, "step": 40, "metrics": {"loss": 0.5}, "time": 5})], T2)
    assert merge_patch(obj["status"], again) is None
    done = job(succeeded=1, startTime=T1, completionTime=T2,
               conditions=[{"type": "Complete", "status": "True"}])
    st = step(obj, done, [pod(0, "Succeeded", exit_code=0, message=json.dumps(RESULT))], T2)
    assert st["phase"] == "Succeeded"
    assert cond(st, "Succeeded")["status"] == "True" and cond(st, "Running")["status"] == "False"
    assert st["metrics"] == RESULT["metrics"]
    assert st["artifacts"] == RESULT["artifacts"]
    assert st["completionTime"] == T2 and st["startTime"] == T1
    assert cond(st, "Created")["lastTransitionTime"] == created_at  # preserved
    # pods gone later (ttl): results stay
    st = step(obj, done, [], T3)
    assert st["metrics"] == RESULT["metrics"] and st["artifacts"] == RESULT["artifacts"]


def test_four_nodes_result_from_rank_zero() -> None:
    obj = tj(with_spec(resources={"nodes": 4, "gpusPerNode": 8, "procsPerNode": 8}))
    pods = [pod(i, "Running") for i in range(4)]
    st = step(obj, job(active=4, ready=4, startTime=T1), pods, T1)
    assert st["phase"] == "Running" and "4/4" in st["message"]
    other = {"metrics": {"accuracy": 0.1}, "artifacts": {}}
    pods = [pod(i, "Succeeded", exit_code=0, message=json.dumps(RESULT if i == 0 else other)) for i in (3, 1, 0, 2)]
    st = step(obj, job(succeeded=4, completionTime=T2, conditions=[{"type": "Complete", "status": "True"}]), pods, T2)
    assert st["metrics"]["accuracy"] == 0.97


def test_suspended_and_resumed() -> None:
    obj = tj(with_spec(suspend=True))
    st = step(obj, job(suspend=True), [], T0)
    assert st["phase"] == "Suspended" and cond(st, "Suspended")["status"] == "True"
    obj["spec"]["suspend"] = False
    st = step(obj, job(active=1), [pod(0)], T1)
    assert st["phase"] == "Running" and cond(st, "Suspended")["status"] == "False"


def test_queued_by_kueue_then_admitted() -> None:
    obj = tj(with_spec(scheduling={"queueName": "team-a"}))
    desired = build(obj, parsed(obj), SETTINGS)
    live = desired.job_for_create()  # created suspended
    j = job(suspend=live["spec"]["suspend"])
    workload = {"status": {"conditions": [{"type": "QuotaReserved", "status": "False", "reason": "Pending",
                                           "message": "couldn't assign flavors to pod set main: insufficient quota for cpu"}]}}
    st = step(obj, j, [], T0, workload)
    assert st["phase"] == "Queued"
    adm = cond(st, "Admitted")
    assert adm["status"] == "False" and "insufficient quota" in adm["message"]
    assert "team-a" in st["message"]
    # Kueue admits: it flips suspend on the live Job (merge patch, manager kueue)
    j = job(suspend=False, active=1, startTime=T1)
    # our desired apply configuration never mentions suspend, so it cannot undo that
    assert "suspend" not in build(obj, parsed(obj), SETTINGS).job["spec"]
    st = step(obj, j, [pod(0)], T1)
    assert st["phase"] == "Running" and cond(st, "Admitted")["status"] == "True"


def test_queued_without_workload_visible() -> None:
    obj = tj(with_spec(scheduling={"queueName": "q"}))
    st = step(obj, job(suspend=True, conditions=[{"type": "Suspended", "status": "True", "message": "Job suspended"}]), [], T0)
    assert st["phase"] == "Queued" and cond(st, "Admitted")["reason"] == "Pending"


def test_preempted_then_resumed() -> None:
    obj = tj(with_spec(scheduling={"queueName": "q"}))
    step(obj, job(active=1, startTime=T1), [pod(0, progress={"seq": 9, "epoch": 4, "time": 9, "metrics": {}})], T1)
    evicted = {"status": {"conditions": [{"type": "Evicted", "status": "True", "reason": "Preempted",
                                          "message": "Preempted to accommodate a higher priority Workload"}]}}
    st = step(obj, job(suspend=True), [], T2, evicted)
    assert st["phase"] == "Queued" and cond(st, "Admitted")["reason"] == "Preempted"
    assert st["restarts"] == 1
    assert st["progress"]["epoch"] == 4  # progress survives the preemption
    st = step(obj, job(active=1, startTime=T3), [pod(0, name="digits-0-new")], T3)
    assert st["phase"] == "Running" and st["restarts"] == 1
    assert st["startTime"] == T1  # the first start


def test_failed_with_bad_config_exit_code() -> None:
    obj = tj(with_spec())
    step(obj, job(active=1), [pod(0)], T1)
    failed = job(failed=1, conditions=[{"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                                        "message": "Container trainer for pod ml/digits-0-abc failed with exit code 2 matching FailJob rule at index 0",
                                        "lastTransitionTime": T2}])
    st = step(obj, failed, [pod(0, "Failed", exit_code=2, message="spec.hyperparameters.optimizer: must be one of adam, sgd")], T2)
    assert st["phase"] == "Failed"
    f = cond(st, "Failed")
    assert f["reason"] == "BadConfiguration"
    assert "exit code 2" in f["message"] and "optimizer" in f["message"]
    assert st["completionTime"] == T2
    assert st["restarts"] == 1


def test_failed_backoff_and_deadline() -> None:
    obj = tj(with_spec())
    failed = job(failed=4, conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                        "message": "Job has reached the specified backoff limit"}])
    pods = [pod(0, "Failed", exit_code=137, reason="OOMKilled", name=f"p{i}") for i in range(4)]
    st = step(obj, failed, pods, T1)
    assert cond(st, "Failed")["reason"] == "OOMKilled" and "backoff limit" in st["message"]
    assert st["restarts"] == 4
    obj2 = tj(with_spec())
    dl = job(conditions=[{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                          "message": "Job was active longer than specified deadline"}])
    st = step(obj2, dl, [], T1)
    assert cond(st, "Failed")["reason"] == "DeadlineExceeded"


def test_stopped_pruned_trial() -> None:
    obj = tj(with_spec())
    obj["metadata"]["annotations"] = {"kubeforge.io/stop": "pruned"}  # the study's request, on the trial
    failed = job(failed=1, conditions=[{"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "exit code 3"}])
    st = step(obj, failed, [pod(0, "Failed", exit_code=3)], T1)
    assert cond(st, "Failed")["reason"] == "Stopped" and "pruned" in st["message"]


def test_result_in_last_state_and_non_json_message() -> None:
    obj = tj(with_spec())
    done = job(succeeded=1, conditions=[{"type": "Complete", "status": "True"}])
    st = step(obj, done, [pod(0, "Succeeded", exit_code=0, message=json.dumps(RESULT), last=True)], T1)
    assert st["metrics"]["val_loss"] == 0.08
    obj2 = tj(with_spec())
    st = step(obj2, done, [pod(0, "Succeeded", exit_code=0, message="plain logs, no JSON")], T1)
    assert st["phase"] == "Succeeded" and st["metrics"] == {} and "artifacts" not in st


def test_unschedulable_pending_message() -> None:
    obj = tj(with_spec())
    p = pod(0, "Pending")
    p["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "message": "0/3 nodes are available: insufficient nvidia.com/gpu"}]
    p["status"]["containerStatuses"] = []
    st = step(obj, job(active=1), [p], T1)
    assert st["phase"] == "Pending" and "insufficient nvidia.com/gpu" in st["message"]


def test_int8_artifacts_land_in_the_status() -> None:
    from kubeforge.api.trainingjob import Artifacts
    from kubeforge.trainingjob.status import artifacts_of

    raw = {
        "model": "s3://b/m/model.onnx",
        "sha256": "f" * 64,
        "bytes": 2000,
        "modelInt8": "s3://b/m/model.int8.onnx",
        "sha256Int8": "e" * 64,
        "bytesInt8": 600,
        "bytesInt8x": True,
    }
    out = artifacts_of({"artifacts": raw})
    assert out == {k: v for k, v in raw.items() if k != "bytesInt8x"}
    assert Artifacts.model_validate(out).model_int8 == "s3://b/m/model.int8.onnx"

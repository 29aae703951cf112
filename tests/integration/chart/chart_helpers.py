"""Helpers of the chart's integration tests (TrainingJobs driven by PodDriver)."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

from kubeforge_cluster.client import ApiError, KubeClient
from kubeforge_cluster.progress import report_for_pod
from kubeforge_cluster.testing import PodDriver

TJ_PATH = "/apis/kubeforge.io/v1alpha1/namespaces/{ns}/trainingjobs"
TERMINATION = {
    "metrics": {"val_loss": 0.0421, "val_accuracy": 0.987},
    "artifacts": {
        "model": "file:///artifacts/model.onnx",
        "checkpoint": "file:///artifacts/checkpoint.pt",
        "sha256": "ab" * 32,
        "bytes": 39695,
    },
}

#: Every status object the operator produced in these tests: (kind, object), for the Argo CD
#: health checks (test_chart_zz_argocd.py).
CAPTURED: list[tuple[str, dict[str, Any]]] = []


def training_job(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"recipe": "mlp-classifier"},
        "dataset": {"uri": "builtin://digits"},
        "hyperparameters": {"epochs": 2},
        "resources": {"cpu": "100m", "memory": "256Mi"},
    }
    body.update(spec)
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": body,
    }


def get_tj(kube: KubeClient, ns: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = kube.get(TJ_PATH.format(ns=ns) + "/" + name)
    return obj


def capture(kind: str, obj: dict[str, Any]) -> None:
    CAPTURED.append((kind, json.loads(json.dumps(obj))))


def wait_phase(
    kube: KubeClient, ns: str, name: str, phases: set[str], timeout: float = 60
) -> dict[str, Any]:
    """Wait until the TrainingJob's phase is one of `phases` (and it observed its generation)."""
    last: dict[str, Any] = {}

    def ok() -> dict[str, Any] | None:
        nonlocal last
        last = get_tj(kube, ns, name)
        st = last.get("status") or {}
        return last if st.get("phase") in phases else None

    try:
        obj: dict[str, Any] = kube.wait_for(f"TrainingJob {ns}/{name} in {phases}", ok, timeout)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; last status: {last.get('status')}") from None
    capture("TrainingJob", obj)
    return obj


def run_to_success(
    kube: KubeClient,
    pod_driver: PodDriver,
    ns: str,
    name: str,
    timeout: float = 60,
    *,
    operator: Any,
) -> dict[str, Any]:
    """Create a TrainingJob and play its pod to success; the TrainingJob must say Succeeded."""
    kube.post(TJ_PATH.format(ns=ns), training_job(name))
    (pod,) = pod_driver.wait_pods(f"kubeforge.io/trainingjob={name}", timeout=timeout)
    pod_driver.run(pod, timeout=timeout)
    wait_phase(kube, ns, name, {"Running"}, timeout)
    # the trainer's progress channel: the operator's endpoint (a TokenReview with the chart's
    # RBAC), with a token bound to the pod
    report_for_pod(
        kube,
        operator,
        pod,
        {"seq": 1, "step": 23, "epoch": 1, "metrics": {"val_loss": 0.1}, "time": time.time()},
    )
    kube.wait_for(
        "progress in status",
        lambda: get_tj(kube, ns, name).get("status", {}).get("progress", {}).get("step") == 23,
        timeout,
    )
    pod_driver.succeed(pod, message=json.dumps(TERMINATION), timeout=timeout)
    return wait_phase(kube, ns, name, {"Succeeded", "Failed"}, timeout)


def delete_quietly(kube: KubeClient, path: str) -> None:
    with contextlib.suppress(ApiError):
        kube.delete(path)

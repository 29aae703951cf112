"""The Argo CD health checks fed the status objects the operator really produced.

Runs last in this folder (zz): besides the objects this test drives through every TrainingJob
phase it can reach on the local cluster, it checks every object the other chart tests captured.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import pytest
from chart_helpers import (
    CAPTURED,
    TJ_PATH,
    capture,
    get_tj,
    run_to_success,
    training_job,
    wait_phase,
)
from kubeforge_cluster.argo_health import health
from kubeforge_cluster.client import KubeClient
from kubeforge_cluster.testing import PodDriver

pytestmark = pytest.mark.integration

EXPECTED = {
    "TrainingJob": {
        "Pending": "Progressing",
        "Queued": "Progressing",
        "Running": "Progressing",
        "Succeeded": "Healthy",
        "Failed": "Degraded",
        "Suspended": "Suspended",
    },
    "TuningStudy": {
        "Pending": "Progressing",
        "Running": "Progressing",
        "Succeeded": "Healthy",
        "Failed": "Degraded",
    },
    "ModelDeployment": {
        "Pending": "Progressing",
        "Loading": "Progressing",
        "Progressing": "Progressing",
        "Ready": "Healthy",
        "Degraded": "Degraded",
        "Failed": "Degraded",
    },
}
GROUP = "/apis/kubeforge.io/v1alpha1/namespaces/{ns}/{plural}"


def expected(kind: str, obj: dict[str, Any]) -> str:
    st = obj.get("status") or {}
    gen, seen = obj["metadata"].get("generation"), st.get("observedGeneration")
    if not st.get("phase") or (gen is not None and seen is not None and seen < gen):
        return "Progressing"
    return EXPECTED[kind][st["phase"]]


def has_controller(module: str) -> bool:
    return importlib.util.find_spec(f"kubeforge.{module}.handlers") is not None


def test_argocd_health_of_what_the_operator_wrote(
    start_operator: Any, kube: KubeClient, namespace: str, pod_driver: PodDriver
) -> None:
    op = start_operator()
    ns = namespace
    # Succeeded (and Running on the way)
    run_to_success(kube, pod_driver, ns, "argo-ok", operator=op)
    # Failed: the trainer's "bad configuration" exit code fails the job at once
    kube.post(TJ_PATH.format(ns=ns), training_job("argo-bad", runPolicy={"backoffLimit": 0}))
    (pod,) = pod_driver.wait_pods("kubeforge.io/trainingjob=argo-bad")
    pod_driver.fail(pod, exit_code=2, message="kubeforge-trainer: bad job document")
    wait_phase(kube, ns, "argo-bad", {"Failed"})
    # Suspended
    kube.post(TJ_PATH.format(ns=ns), training_job("argo-suspended", suspend=True))
    wait_phase(kube, ns, "argo-suspended", {"Suspended"})
    # Queued behind Kueue (no Kueue here: the Job stays suspended) or Pending
    kube.post(
        TJ_PATH.format(ns=ns),
        training_job("argo-queued", scheduling={"queueName": "nowhere"}),
    )
    wait_phase(kube, ns, "argo-queued", {"Queued", "Pending"})
    # a spec change the operator has not seen yet is Progressing whatever the phase says
    done = get_tj(kube, ns, "argo-suspended")
    done["metadata"]["generation"] += 1
    assert health("TrainingJob", done)["status"] == "Progressing"

    if has_controller("tuningstudy"):
        study = {
            "apiVersion": "kubeforge.io/v1alpha1",
            "kind": "TuningStudy",
            "metadata": {"name": "argo-study"},
            "spec": {
                "objective": {"metric": "val_loss", "direction": "minimize"},
                "searchSpace": {"lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True}},
                "algorithm": {"name": "random", "seed": 0},
                "maxTrials": 1,
                "parallelism": 1,
                "trialTemplate": {"spec": training_job("t")["spec"]},
            },
        }
        kube.post(GROUP.format(ns=ns, plural="tuningstudies"), study)

        def trial_name() -> str | None:
            for tj in kube.get(TJ_PATH.format(ns=ns))["items"]:
                owners = tj["metadata"].get("ownerReferences") or []
                if any(o["kind"] == "TuningStudy" for o in owners):
                    return str(tj["metadata"]["name"])
            return None

        name = kube.wait_for("the study's trial", trial_name, timeout=60)
        (trial,) = pod_driver.wait_pods(f"kubeforge.io/trainingjob={name}", timeout=60)
        pod_driver.run(trial)
        pod_driver.succeed(trial, message=json.dumps({"metrics": {"val_loss": 0.05}}))
        kube.wait_for(
            "study finished",
            lambda: (
                (s := kube.get(GROUP.format(ns=ns, plural="tuningstudies") + "/argo-study"))
                .get("status", {})
                .get("phase")
                in ("Succeeded", "Failed")
                and s
            ),
            timeout=60,
        )
        capture(
            "TuningStudy", kube.get(GROUP.format(ns=ns, plural="tuningstudies") + "/argo-study")
        )

    if has_controller("modeldeployment"):
        md = {
            "apiVersion": "kubeforge.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "argo-md"},
            "spec": {"model": {"fromTrainingJob": "argo-ok"}, "replicas": 1},
        }
        kube.post(GROUP.format(ns=ns, plural="modeldeployments"), md)
        kube.wait_for(
            "ModelDeployment status",
            lambda: (
                kube.get(GROUP.format(ns=ns, plural="modeldeployments") + "/argo-md")
                .get("status", {})
                .get("phase")
            ),
            timeout=60,
        )
        capture(
            "ModelDeployment", kube.get(GROUP.format(ns=ns, plural="modeldeployments") + "/argo-md")
        )

    seen: dict[str, set[str]] = {}
    for kind, obj in CAPTURED:
        h = health(kind, obj)
        assert h["status"] == expected(kind, obj), (kind, obj.get("status"), h)
        assert h.get("message"), (kind, h)
        seen.setdefault(kind, set()).add((obj.get("status") or {}).get("phase"))
    assert {"Running", "Succeeded", "Failed", "Suspended"} <= seen["TrainingJob"], seen

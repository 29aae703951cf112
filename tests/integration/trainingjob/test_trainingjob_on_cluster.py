"""TrainingJob on the real control plane, the pod driver playing the trainer."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from kubeforge_cluster.progress import report_for_pod
from tj_support import RESULT, apply, get_tj, trainingjob, wait_phase

pytestmark = pytest.mark.integration


def test_apply_to_succeeded(operator: Any, kube: Any, kubectl: Any, namespace: str, pod_driver: Any) -> None:
    apply(kubectl, namespace, trainingjob("digits", resources={"nodes": 2, "cpu": "100m",
                                                                "memory": "128Mi", "shmSize": "64Mi"}))
    job = kube.wait_for("Job", lambda: kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/digits"), timeout=30)
    spec = job["spec"]
    assert (spec["completions"], spec["parallelism"], spec["completionMode"]) == (2, 2, "Indexed")
    assert spec["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2, 3]
    owner = job["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "TrainingJob" and owner["controller"] is True
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "digits" and pod["securityContext"]["runAsNonRoot"] is True
    cmd = pod["containers"][0]["command"]
    assert cmd[:2] == ["kubeforge-launch", "--nnodes"] and "digits-0.digits" in cmd
    svc = kube.wait_for("Service", lambda: kube.get(f"/api/v1/namespaces/{namespace}/services/digits"), timeout=30)
    assert svc["spec"]["clusterIP"] == "None"
    pods = pod_driver.wait_pods("kubeforge.io/trainingjob=digits", count=2, phase="Running")
    wait_phase(kube, namespace, "digits", "Running")
    # rank 0 reports progress to the operator's endpoint with its pod's token, as the trainer does
    rank0 = next(p for p in pods if p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "0")
    report_for_pod(kube, operator, rank0,
                   {"seq": 1, "epoch": 1, "step": 10, "metrics": {"loss": 0.3}, "time": time.time()})
    kube.wait_for("progress", lambda: get_tj(kube, namespace, "digits").get("status", {}).get("progress", {}).get("epoch") == 1, timeout=20)
    for p in pods:
        pod_driver.succeed(p, message=json.dumps(RESULT if p is rank0 else {"metrics": {}}))
    out = kubectl.result("wait", "-n", namespace, "--for=condition=Succeeded", "trainingjob/digits", "--timeout=30s")
    assert out.returncode == 0, out.stderr
    st = get_tj(kube, namespace, "digits")["status"]
    assert st["phase"] == "Succeeded"
    assert st["metrics"] == RESULT["metrics"] and st["artifacts"] == RESULT["artifacts"]
    assert st["nodes"]["succeeded"] == 2 and st["completionTime"]
    assert st["observedGeneration"] == 1
    # the user sees it
    evs = kube.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    assert any(e["reason"] == "Succeeded" and e["involvedObject"]["name"] == "digits" for e in evs)
    # no grant was made for the progress channel
    assert kube.get(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings")["items"] == []
    # no kopf bookkeeping on our objects
    ann = get_tj(kube, namespace, "digits")["metadata"].get("annotations", {})
    assert not any("last-handled-configuration" in k for k in ann)
    assert not get_tj(kube, namespace, "digits")["metadata"].get("finalizers")


def test_failing_pod_fails_with_reason(operator: Any, kube: Any, kubectl: Any, namespace: str, pod_driver: Any) -> None:
    apply(kubectl, namespace, trainingjob("bad"))
    (p,) = pod_driver.wait_pods("kubeforge.io/trainingjob=bad", count=1, phase="Running")
    pod_driver.fail(p, exit_code=2, message="spec.hyperparameters.optimizer: must be one of adam, sgd")
    out = kubectl.result("wait", "-n", namespace, "--for=condition=Failed", "trainingjob/bad", "--timeout=30s")
    assert out.returncode == 0, out.stderr
    st = get_tj(kube, namespace, "bad")["status"]
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BadConfiguration"
    assert "exit code 2" in failed["message"] and "optimizer" in failed["message"]
    assert st["phase"] == "Failed"
    # failed at once: no retry despite backoffLimit 3
    assert len(pod_driver.pods("kubeforge.io/trainingjob=bad")) == 1


def test_spec_the_api_server_cannot_check_fails_naming_the_field(
    operator: Any, kube: Any, kubectl: Any, namespace: str
) -> None:
    # Two names that map to one HP_ variable: CEL cannot type free-form values, the operator can.
    apply(kubectl, namespace, trainingjob(
        "clash", hyperparameters={"batch-size": 32, "batch_size": 64}))
    out = kubectl.result("wait", "-n", namespace, "--for=condition=Failed", "trainingjob/clash",
                         "--timeout=30s")
    assert out.returncode == 0, out.stderr
    st = get_tj(kube, namespace, "clash")["status"]
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert "spec.hyperparameters" in failed["message"] and "HP_BATCH_SIZE" in failed["message"]
    jobs = kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs")["items"]
    assert jobs == []  # nothing half-made


def test_admitted_under_pss_restricted(operator: Any, kube: Any, kubectl: Any, namespace: str, pod_driver: Any) -> None:
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest", "--overwrite")
    byo = trainingjob("strict", image="example/katib-mnist:1", command=["python3", "/opt/m.py"],
                      args=["--lr=$(HP_LR)"], metricsCollector={"kind": "StdOut"},
                      pod={"volumes": [{"name": "scratch", "mountPath": "/scratch", "emptyDir": {"sizeLimit": "1Gi"}}],
                           "annotations": {"sidecar.istio.io/inject": "false"}})
    del byo["spec"]["model"], byo["spec"]["dataset"]
    apply(kubectl, namespace, byo)
    pods = pod_driver.wait_pods("kubeforge.io/trainingjob=strict", count=1, timeout=30)
    assert pods[0]["spec"]["initContainers"][0]["name"] == "kubeforge-report"
    wait_phase(kube, namespace, "strict", "Running")


def test_suspend_and_resume(operator: Any, kube: Any, kubectl: Any, namespace: str, pod_driver: Any) -> None:
    apply(kubectl, namespace, trainingjob("pause", suspend=True))
    wait_phase(kube, namespace, "pause", "Suspended")
    assert pod_driver.pods("kubeforge.io/trainingjob=pause") == []
    kubectl("patch", "-n", namespace, "trainingjob/pause", "--type=merge", "-p", '{"spec":{"suspend":false}}')
    pod_driver.wait_pods("kubeforge.io/trainingjob=pause", count=1, phase="Running")
    wait_phase(kube, namespace, "pause", "Running")


def _apiserver_writes(kubectl: Any, resources: set[str]) -> float:
    text = kubectl("get", "--raw", "/metrics", timeout=30)
    total = 0.0
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1 : line.index("}")].split(","))
        verb = labels.get("verb", "").strip('"')
        res = labels.get("resource", "").strip('"')
        if verb in ("POST", "PUT", "PATCH", "DELETE", "APPLY") and res in resources:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_idle_operator_writes_nothing(cluster: Any, kubeforge_crds: Any, kube: Any, kubectl: Any, namespace: str,
                                     pod_driver: Any, tmp_path: Any) -> None:
    """With nothing changing, no API writes. An operator of its own watches only this namespace
    (other tests' namespaces being deleted are change, not idleness). 25 s is enough: this
    operator resyncs every 10 s (every object is reconciled at least twice in the window), and
    reconciles are the only source of writes; kopf itself writes nothing (no change-detection
    handlers, no finalizers)."""
    from kf_operator_process import OperatorProcess

    op = OperatorProcess(str(cluster.kubeconfig), tmp_path / "operator.log", KUBEFORGE_NAMESPACES=namespace)
    op.start()
    try:
        apply(kubectl, namespace, trainingjob("idle-run"))
        apply(kubectl, namespace, trainingjob("idle-done"))
        pod_driver.wait_pods("kubeforge.io/trainingjob=idle-run", count=1, phase="Running")
        (p,) = pod_driver.wait_pods("kubeforge.io/trainingjob=idle-done", count=1, phase="Running")
        pod_driver.succeed(p, message=json.dumps(RESULT))
        wait_phase(kube, namespace, "idle-run", "Running")
        wait_phase(kube, namespace, "idle-done", "Succeeded")
        time.sleep(2)  # let the last events settle
        before = op.writes()
        time.sleep(25)
        detail = [ln for ln in op.metrics().splitlines() if ln.startswith("kubeforge_api_writes_total{")]
        assert op.writes() - before == 0, detail
        assert op.writes() > 0  # it did work before going idle
    finally:
        op.stop()

"""ModelDeployment on the real local control plane: the operator (a `kubeforge-operator`
subprocess watching the test's namespace) makes the children, the controller-manager makes
ReplicaSets and pods, kwok runs them, and the test plays the kubelet for crash loops and for the
TrainingJob's pod."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubeforge_cluster.client import KubeClient
from kubeforge_cluster.testing import PodDriver, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
MD_API = "/apis/kubeforge.io/v1alpha1"
KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
SELECTOR = "kubeforge.io/modeldeployment={}"
JSON = dict[str, Any]


@pytest.fixture
def operator(
    kubeconfig: str, kubeforge_crds: list[str], namespace: str, tmp_path: Path
) -> Iterator[None]:
    """kubeforge-operator watching only this test's namespace (its log printed on errors)."""
    exe = Path(sys.executable).with_name("kubeforge-operator")
    env = {
        **os.environ,
        "KUBECONFIG": kubeconfig,
        "KUBEFORGE_METRICS_PORT": "0",
        "KUBEFORGE_LIVENESS_PORT": "0",
        "KUBEFORGE_LOG_FORMAT": "plain",
        "KUBEFORGE_CONCURRENCY": "4",
    }
    env.pop("KUBERNETES_SERVICE_HOST", None)
    log_path = tmp_path / "operator.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(exe), "--namespace", namespace], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    text = log_path.read_text(errors="replace")
    if "Traceback" in text:
        print(f"--- operator log ---\n{text[-6000:]}")


def md_body(name: str, spec: JSON) -> JSON:
    spec = {**spec, "scheduling": {"tolerations": [KWOK_TOLERATION], **spec.get("scheduling", {})}}
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }


def create_md(kube: KubeClient, ns: str, name: str, spec: JSON) -> JSON:
    result: JSON = kube.post(f"{MD_API}/namespaces/{ns}/modeldeployments", md_body(name, spec))
    return result


def get(kube: KubeClient, path: str) -> JSON | None:
    result: JSON | None = kube.get_if_exists(path)
    return result


def md_status(kube: KubeClient, ns: str, name: str) -> JSON:
    obj = get(kube, f"{MD_API}/namespaces/{ns}/modeldeployments/{name}") or {}
    status: JSON = obj.get("status") or {}
    return status


def wait_phase(kube: KubeClient, ns: str, name: str, phase: str, timeout: float = 60) -> JSON:
    last: JSON = {}

    def ok() -> JSON | None:
        nonlocal last
        last = md_status(kube, ns, name)
        return last if last.get("phase") == phase else None

    try:
        result: JSON = wait_until(f"ModelDeployment {name} phase {phase}", ok, timeout=timeout)
    except TimeoutError as e:
        raise AssertionError(f"{e}; last status: {json.dumps(last)[:1500]}") from None
    return result


def condition(status: JSON, type_: str) -> JSON:
    return next(c for c in status.get("conditions", []) if c["type"] == type_)


def deployment(kube: KubeClient, ns: str, name: str) -> JSON | None:
    return get(kube, f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")


def test_children_shape_ready_and_cascade(kube: KubeClient, namespace: str, operator: None) -> None:
    ns = namespace
    create_md(
        kube,
        ns,
        "digits",
        {
            # (pvc:// mounts are checked by the unit tests: kwok's nodes have no volumes)
            "model": {"uri": "s3://models/digits/model.onnx", "secretRef": "creds"},
            "replicas": 2,
            "runtime": {"batching": {"maxBatchSize": 8, "maxDelayMs": 1}},
        },
    )
    dep = wait_until("Deployment", lambda: deployment(kube, ns, "digits"), timeout=30)
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert dep["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["args"][:4] == ["--model", "s3://models/digits/model.onnx", "--name", "digits"]
    assert "--max-batch-size" in c["args"] and "8" in c["args"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    assert {"secretRef": {"name": "creds"}} in c["envFrom"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    svc = kube.get(f"/api/v1/namespaces/{ns}/services/digits")
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [
        ("http", 8080),
        ("grpc", 8081),
    ]
    pdb = wait_until(
        "PDB",
        lambda: get(kube, f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/digits"),
    )
    assert pdb["spec"]["maxUnavailable"] == 1
    assert (
        get(kube, f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/digits") is None
    )

    # the controller-manager's ReplicaSet and kwok's pods make it Ready
    st = wait_phase(kube, ns, "digits", "Ready", timeout=90)
    assert st["replicas"] == {"desired": 2, "ready": 2, "updated": 2}
    assert st["url"] == f"http://digits.{ns}.svc.cluster.local:8080/v2/models/digits"
    assert condition(st, "ModelLoaded")["status"] == "True"
    assert condition(st, "Ready")["status"] == "True"

    # deleting cascades (owner references + the garbage collector)
    kube.delete(f"{MD_API}/namespaces/{ns}/modeldeployments/digits")
    wait_until(
        "children gone",
        lambda: (
            deployment(kube, ns, "digits") is None
            and get(kube, f"/api/v1/namespaces/{ns}/services/digits") is None
            and get(kube, f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/digits") is None
        ),
        timeout=60,
    )


def test_autoscaling_makes_an_hpa(kube: KubeClient, namespace: str, operator: None) -> None:
    ns = namespace
    create_md(
        kube,
        ns,
        "auto",
        {
            "model": {"uri": "s3://bucket/m/"},
            "replicas": 2,
            "autoscaling": {"minReplicas": 2, "maxReplicas": 4, "metric": "cpu", "target": 60},
        },
    )
    hpa = wait_until(
        "HPA",
        lambda: get(kube, f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/auto"),
        timeout=30,
    )
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "auto",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    assert len(hpa["spec"]["metrics"]) == 1  # no Pods metric without an adapter (the default)
    dep = deployment(kube, ns, "auto")
    assert dep is not None and dep["spec"]["replicas"] == 2
    wait_phase(kube, ns, "auto", "Ready", timeout=90)


def test_monitoring_with_prometheus_crds(
    kube: KubeClient, namespace: str, prometheus_crds: list[str], operator: None, tmp_path: Path
) -> None:
    ns = namespace
    create_md(kube, ns, "mon", {"model": {"uri": "s3://bucket/m/"}})
    mon = "/apis/monitoring.coreos.com/v1/namespaces"
    sm = wait_until("ServiceMonitor", lambda: get(kube, f"{mon}/{ns}/servicemonitors/mon"))
    assert sm["spec"]["endpoints"][0]["port"] == "http"
    assert sm["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    rule = wait_until("PrometheusRule", lambda: get(kube, f"{mon}/{ns}/prometheusrules/mon"))
    alerts = [r["alert"] for r in rule["spec"]["groups"][0]["rules"]]
    assert alerts == [
        "KubeforgeModelHighErrorRate",
        "KubeforgeModelHighLatency",
        "KubeforgeModelReplicasNotReady",
    ]
    promtool = shutil.which("promtool")
    if promtool:
        path = tmp_path / "rules.yaml"
        path.write_text(yaml.safe_dump(rule["spec"]))
        out = subprocess.run(
            [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
        )
        assert out.returncode == 0, out.stdout + out.stderr


def test_crash_loop_is_degraded_with_the_reason(
    kube: KubeClient, namespace: str, pod_driver: PodDriver, operator: None
) -> None:
    ns = namespace
    create_md(kube, ns, "crash", {"model": {"uri": "s3://bucket/missing/"}})
    wait_phase(kube, ns, "crash", "Ready", timeout=90)
    pods = pod_driver.wait_pods(SELECTOR.format("crash"), count=1, phase="Running")
    pod_driver.crashloop(
        pods[0], restarts=5, message="ModelLoadError: s3://bucket/missing/: no model.onnx"
    )
    st = wait_phase(kube, ns, "crash", "Degraded", timeout=60)
    ready = condition(st, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "CrashLoopBackOff"
    assert "no model.onnx" in st["message"]
    assert condition(st, "ModelLoaded")["reason"] == "CrashLoopBackOff"


def replica_sets(kube: KubeClient, ns: str, name: str) -> list[JSON]:
    items: list[JSON] = kube.get(
        f"/apis/apps/v1/namespaces/{ns}/replicasets",
        query={"labelSelector": SELECTOR.format(name)},
    )["items"]
    return items


def test_model_change_rolls_out(kube: KubeClient, namespace: str, operator: None) -> None:
    ns = namespace
    create_md(kube, ns, "roll", {"model": {"uri": "s3://bucket/v1/"}})
    wait_phase(kube, ns, "roll", "Ready", timeout=90)
    assert len(replica_sets(kube, ns, "roll")) == 1
    kube.patch(
        f"{MD_API}/namespaces/{ns}/modeldeployments/roll",
        {"spec": {"model": {"uri": "s3://bucket/v2/"}}},
    )
    wait_until("a second ReplicaSet", lambda: len(replica_sets(kube, ns, "roll")) == 2, timeout=30)

    def rolled() -> JSON | None:
        st = md_status(kube, ns, "roll")
        ok = st.get("phase") == "Ready" and (st.get("model") or {}).get("uri") == "s3://bucket/v2/"
        return st if ok else None

    st = wait_until("the new model Ready", rolled, timeout=120)
    assert st["replicas"]["updated"] == 1
    dep = deployment(kube, ns, "roll")
    assert (
        dep is not None
        and "s3://bucket/v2/" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    )


def test_training_job_to_model_deployment(
    kube: KubeClient, namespace: str, pod_driver: PodDriver, operator: None
) -> None:
    """fromTrainingJob: waits with WaitingForModel, then serves the TrainingJob's model once the
    TrainingJob reconciler has read it from the trainer pod's termination message."""
    ns = namespace
    create_md(kube, ns, "served", {"model": {"fromTrainingJob": "train"}})
    wait_phase(kube, ns, "served", "Pending", timeout=60)
    wait_until(
        "WaitingForModel",
        lambda: (
            condition(md_status(kube, ns, "served"), "ModelLoaded")["reason"] == "WaitingForModel"
        ),
        timeout=30,
    )
    assert deployment(kube, ns, "served") is None
    kube.post(
        f"{MD_API}/namespaces/{ns}/trainingjobs",
        {
            "apiVersion": "kubeforge.io/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "train"},
            "spec": {
                "model": {"recipe": "mlp-classifier"},
                "dataset": {"uri": "builtin://digits"},
                "scheduling": {"tolerations": [KWOK_TOLERATION]},
            },
        },
    )
    # play the trainer: exit 0 with the contract's termination message
    model = f"s3://artifacts/{ns}/train/model.onnx"
    result = {"metrics": {"val_loss": 0.1}, "artifacts": {"model": model, "sha256": "ab" * 32}}
    pods = pod_driver.wait_pods("kubeforge.io/trainingjob=train", count=1, timeout=60)
    pod_driver.succeed(pods[0], message=json.dumps(result))
    dep = wait_until("the server Deployment", lambda: deployment(kube, ns, "served"), timeout=90)
    assert dep["spec"]["template"]["spec"]["containers"][0]["args"][1] == model
    st = wait_phase(kube, ns, "served", "Ready", timeout=90)
    assert (st["model"]["uri"], st["model"]["sha256"]) == (model, "ab" * 32)
    assert condition(st, "ModelLoaded")["status"] == "True"

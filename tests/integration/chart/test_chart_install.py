"""The chart on the real local control plane: install, RBAC enough to reconcile, examples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from chart_helpers import capture, run_to_success
from kubeforge_cluster.chartops import NAMESPACE, RELEASE
from kubeforge_cluster.client import KubeClient
from kubeforge_cluster.helm import Helm
from kubeforge_cluster.testing import Kubectl, PodDriver

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
KINDS = {
    "TrainingJob": "trainingjobs",
    "TuningStudy": "tuningstudies",
    "ModelDeployment": "modeldeployments",
}


def has_controller(kind: str) -> bool:
    """Whether the operator in this checkout reconciles `kind` yet."""
    import importlib.util

    module = {
        "TrainingJob": "trainingjob",
        "TuningStudy": "tuningstudy",
        "ModelDeployment": "modeldeployment",
    }[kind]
    return importlib.util.find_spec(f"kubeforge.{module}.handlers") is not None


def test_helm_install_creates_the_release(
    helm: Helm, release: str, kubectl: Kubectl, kube: KubeClient
) -> None:
    status = json.loads(helm("status", release, "-n", NAMESPACE, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    dep = kubectl.json("get", "deployment", RELEASE, "-n", NAMESPACE)
    # two replicas behind a Lease (leader election): rolling updates are safe
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    assert dep["spec"]["replicas"] == 2
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    kubectl("get", "role", f"{RELEASE}-leader", "-n", NAMESPACE)
    kubectl("get", "serviceaccount", RELEASE, "-n", NAMESPACE)
    kubectl("get", "service", f"{RELEASE}-metrics", "-n", NAMESPACE)
    kubectl("get", "clusterrole", RELEASE, f"{RELEASE}-discovery")
    kubectl("get", "clusterrolebinding", RELEASE, f"{RELEASE}-discovery")
    kubectl("get", "validatingadmissionpolicy", f"{RELEASE}-no-stronger-than-pods")
    kubectl("get", "validatingadmissionpolicybinding", f"{RELEASE}-no-stronger-than-pods")
    kubectl("get", "service", f"{RELEASE}-progress", "-n", NAMESPACE)
    kubectl("get", "secret", f"{RELEASE}-progress-tls", "-n", NAMESPACE)
    for plural in KINDS.values():
        kubectl("get", "crd", f"{plural}.kubeforge.io")
    # The API server's Pod Security admission finds the operator pod "restricted"-clean.
    kube.wait_for(
        "the operator pod (fake, on kwok)",
        lambda: kube.get(
            f"/api/v1/namespaces/{NAMESPACE}/pods",
            query={"labelSelector": "app.kubernetes.io/component=operator"},
        )["items"],
    )
    out = kubectl.result(
        "label",
        "--overwrite",
        "--dry-run=server",
        "ns",
        NAMESPACE,
        "pod-security.kubernetes.io/enforce=restricted",
    )
    assert out.returncode == 0, out.stderr
    assert "violate" not in out.stderr, out.stderr


def test_chart_rbac_is_enough_to_reconcile_a_trainingjob(
    start_operator: Any, kube: KubeClient, namespace: str, pod_driver: PodDriver
) -> None:
    op = start_operator()
    tj = run_to_success(kube, pod_driver, namespace, "chart-rbac", operator=op)
    st = tj["status"]
    assert st["phase"] == "Succeeded", st
    assert st["metrics"]["val_loss"] == pytest.approx(0.0421)
    assert st["artifacts"]["model"] == "file:///artifacts/model.onnx"
    # progress went through the endpoint (TokenReview and pod get with the chart's rights), and
    # the operator made no identity and granted nothing in the namespace
    assert st["progress"]["step"] == 23
    assert kube.get(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles")["items"] == []
    assert [sa["metadata"]["name"] for sa in
            kube.get(f"/api/v1/namespaces/{namespace}/serviceaccounts")["items"]] == ["default"]
    log = op.log.read_text(errors="replace")
    assert "Forbidden" not in log and " 403" not in log, op.tail()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_passes_server_side_dry_run(
    path: Path, release: str, kubectl: Kubectl, namespace: str
) -> None:
    out = kubectl("apply", "--server-side", "--dry-run=server", "-n", namespace, "-f", str(path))
    assert "(server dry run)" in out, out


def test_examples_do_not_drift_after_reconciling(
    start_operator: Any, kube: KubeClient, kubectl: Kubectl, namespace: str
) -> None:
    """What Argo CD needs: the operator never writes what users own, so after it reconciled the
    examples `kubectl diff` is empty and a second apply changes nothing."""
    start_operator()
    files = [a for p in EXAMPLES for a in ("-f", str(p))]
    kubectl("apply", "-n", namespace, *files)
    reconciled = [kind for kind in KINDS if has_controller(kind)]
    assert "TrainingJob" in reconciled
    objs = [(d["kind"], d["metadata"]["name"]) for p in EXAMPLES for d in _docs(p)]

    def all_reconciled() -> bool:
        for kind, name in objs:
            if kind not in reconciled:
                continue
            o = kube.get(f"/apis/kubeforge.io/v1alpha1/namespaces/{namespace}/{KINDS[kind]}/{name}")
            st = o.get("status") or {}
            if st.get("observedGeneration") != o["metadata"]["generation"] or not st.get("phase"):
                return False
        return True

    try:
        kube.wait_for("every example reconciled", all_reconciled, timeout=120)
    except TimeoutError as exc:
        statuses = {
            (kind, name): kube.get(
                f"/apis/kubeforge.io/v1alpha1/namespaces/{namespace}/{KINDS[kind]}/{name}"
            ).get("status")
            for kind, name in objs
        }
        raise AssertionError(f"{exc}: {statuses}") from None
    for kind, name in objs:
        if kind in reconciled:
            capture(
                kind,
                kube.get(
                    f"/apis/kubeforge.io/v1alpha1/namespaces/{namespace}/{KINDS[kind]}/{name}"
                ),
            )
    diff = kubectl.result("diff", "-n", namespace, *files)
    assert diff.returncode == 0, f"kubectl diff shows drift:\n{diff.stdout}{diff.stderr}"
    again = kubectl("apply", "-n", namespace, *files)
    lines = [ln for ln in again.splitlines() if ln.strip()]
    assert lines and all(ln.endswith(" unchanged") for ln in lines), again
    # nobody but the user wrote a spec: every object is still at generation 1
    for kind, name in objs:
        live = kube.get(f"/apis/kubeforge.io/v1alpha1/namespaces/{namespace}/{KINDS[kind]}/{name}")
        assert live["metadata"]["generation"] == 1, (kind, name, live["metadata"])


def _docs(path: Path) -> list[dict[str, Any]]:
    import yaml

    return [d for d in yaml.safe_load_all(path.read_text()) if d]

"""The operator's reach, scoped when asked: with `watchNamespaces` the chart binds namespaced Roles
in those namespaces only, and the operator still reconciles there (progress through the
endpoint included) while its token can do nothing elsewhere. On start-up it deletes the
progress Roles/RoleBindings earlier versions made."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chart_helpers import TERMINATION, run_to_success
from kubeforge_cluster.chartops import NAMESPACE, RELEASE, install
from kubeforge_cluster.client import KubeClient
from kubeforge_cluster.helm import Helm
from kubeforge_cluster.testing import PodDriver

pytestmark = pytest.mark.integration

RBAC = "/apis/rbac.authorization.k8s.io/v1"
LEGACY = {"app.kubernetes.io/managed-by": "kubeforge", "kubeforge.io/component": "progress"}


@pytest.fixture
def scoped(helm: Helm, release: str, namespace: str, tmp_path: Path) -> Iterator[str]:
    values = {"artifactStore": f"file://{tmp_path}/", "operator": {"resyncSeconds": 30}}
    install(helm, {**values, "watchNamespaces": [namespace]}, upgrade=True)
    yield namespace
    install(helm, values, upgrade=True)


def legacy_grant(kube: KubeClient, namespace: str) -> None:
    """What an earlier kubeforge made for its progress channel (get/patch pods for `default`)."""
    kube.post(f"{RBAC}/namespaces/{namespace}/roles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "kubeforge-progress", "labels": LEGACY},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]})
    kube.post(f"{RBAC}/namespaces/{namespace}/rolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "kubeforge-progress-default", "labels": LEGACY},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "kubeforge-progress"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": namespace}]})


def test_watch_namespaces_binds_roles_there_only(
    scoped: str, start_operator: Any, kube: KubeClient, kubectl: Any, pod_driver: PodDriver
) -> None:
    namespace = scoped
    sa = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
    binding = kube.get(f"{RBAC}/namespaces/{namespace}/rolebindings/{RELEASE}")
    assert binding["roleRef"]["kind"] == "Role"
    clusterwide = [b["metadata"]["name"] for b in kube.get(f"{RBAC}/clusterrolebindings")["items"]
                   if any(s.get("name") == RELEASE and s.get("namespace") == NAMESPACE
                          for s in b.get("subjects") or [])]
    assert clusterwide == [f"{RELEASE}-discovery"]

    def can(verb: str, what: str, ns: str) -> str:
        return str(kubectl.result("auth", "can-i", verb, what, "-n", ns, f"--as={sa}").stdout.strip())

    assert can("create", "jobs.batch", namespace) == "yes"
    assert can("create", "jobs.batch", "kube-system") == "no"
    assert can("create", "jobs.batch", "default") == "no"
    assert can("patch", "pods", namespace) == "no"
    assert can("create", "rolebindings", namespace) == "no"

    legacy_grant(kube, namespace)
    user = f"system:serviceaccount:{namespace}:default"
    assert kubectl.result("auth", "can-i", "patch", "pods", "-n", namespace,
                          f"--as={user}").stdout.strip() == "yes"
    op = start_operator()
    def legacy_left() -> list[str]:
        return [i["metadata"]["name"] for plural in ("roles", "rolebindings")
                for i in kube.get(f"{RBAC}/namespaces/{namespace}/{plural}")["items"]
                if i["metadata"]["name"].startswith("kubeforge-progress")]

    kube.wait_for("the old progress grant deleted", lambda: legacy_left() == [], timeout=30)
    assert kubectl.result("auth", "can-i", "patch", "pods", "-n", namespace,
                          f"--as={user}").stdout.strip() == "no"
    # the chart's own Role and binding are untouched
    assert kube.get(f"{RBAC}/namespaces/{namespace}/rolebindings/{RELEASE}")

    tj = run_to_success(kube, pod_driver, namespace, "scoped", operator=op)
    assert tj["status"]["phase"] == "Succeeded"
    assert tj["status"]["metrics"] == TERMINATION["metrics"]
    assert tj["status"]["progress"]["step"] == 23

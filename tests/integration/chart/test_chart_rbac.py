"""Least privilege, guarded: the chart's ClusterRole minus any one of these verbs is not enough
for the operator to reconcile a TrainingJob (so no rule in the chart is decoration, and the test
in test_chart_install.py, which passes with the full role, proves it is enough)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import pytest
from chart_helpers import TERMINATION, run_to_success
from kubeforge_cluster.chartops import NAMESPACE, RELEASE
from kubeforge_cluster.client import ApiError, KubeClient
from kubeforge_cluster.testing import PodDriver

pytestmark = pytest.mark.integration

RBAC = "/apis/rbac.authorization.k8s.io/v1"
REDUCED = "kubeforge-reduced"


def without(role: dict[str, Any], group: str, resource: str, verb: str) -> dict[str, Any]:
    """`role` with `verb` removed for (group, resource) only."""
    rules: list[dict[str, Any]] = []
    found = False
    for rule in role["rules"]:
        if group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]:
            found = True
            rest = [r for r in rule["resources"] if r != resource]
            if rest:
                rules.append({**rule, "resources": rest})
            verbs = [v for v in rule["verbs"] if v != verb]
            if verbs:
                rules.append({"apiGroups": [group], "resources": [resource], "verbs": verbs})
        else:
            rules.append(copy.deepcopy(rule))
    assert found, f"the chart's role has no {verb} on {group}/{resource}"
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": REDUCED},
        "rules": rules,
    }


@pytest.fixture
def reduced_identity(kube: KubeClient, release: str) -> Iterator[Any]:
    """A ServiceAccount bound to a ClusterRole the test writes (plus the chart's discovery role)."""
    kube.post(
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": REDUCED}},
    )
    for name, role in ((REDUCED, REDUCED), (f"{REDUCED}-discovery", f"{RELEASE}-discovery")):
        kube.post(
            f"{RBAC}/clusterrolebindings",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": name},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": role,
                },
                "subjects": [{"kind": "ServiceAccount", "name": REDUCED, "namespace": NAMESPACE}],
            },
        )

    # the chart's namespaced Role for the Lease (leader election), as the release binds it
    kube.post(
        f"{RBAC}/namespaces/{NAMESPACE}/rolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": f"{REDUCED}-leader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": f"{RELEASE}-leader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": REDUCED, "namespace": NAMESPACE}],
        },
    )

    def set_role(role: dict[str, Any]) -> None:
        with contextlib.suppress(ApiError):
            kube.delete(f"{RBAC}/clusterroles/{REDUCED}")
        kube.post(f"{RBAC}/clusterroles", role)

    yield set_role
    for path in (
        f"{RBAC}/clusterroles/{REDUCED}",
        f"{RBAC}/clusterrolebindings/{REDUCED}",
        f"{RBAC}/clusterrolebindings/{REDUCED}-discovery",
        f"{RBAC}/namespaces/{NAMESPACE}/rolebindings/{REDUCED}-leader",
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{REDUCED}",
    ):
        with contextlib.suppress(ApiError):
            kube.delete(path)


def test_control_the_same_role_unreduced_reconciles(
    reduced_identity: Any,
    start_operator: Any,
    kube: KubeClient,
    namespace: str,
    pod_driver: PodDriver,
) -> None:
    """The control: the mechanism below (a copy of the chart's role under another account)
    works when nothing is removed, so the failures below are the missing verb's doing."""
    chart_role = kube.get(f"{RBAC}/clusterroles/{RELEASE}")
    reduced_identity(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": REDUCED},
            "rules": chart_role["rules"],
        }
    )
    op = start_operator(service_account=REDUCED)
    tj = run_to_success(kube, pod_driver, namespace, "unreduced", timeout=30, operator=op)
    assert tj["status"]["phase"] == "Succeeded"
    assert tj["status"]["metrics"] == TERMINATION["metrics"]


@pytest.mark.parametrize(
    ("group", "resource", "verb"),
    [
        ("batch", "jobs", "create"),
        ("kubeforge.io", "trainingjobs/status", "patch"),
        ("", "pods", "watch"),
        ("", "pods", "get"),
    ],
    ids=lambda v: v or "core",
)
def test_role_missing_one_verb_fails_to_reconcile(
    group: str,
    resource: str,
    verb: str,
    reduced_identity: Any,
    start_operator: Any,
    kube: KubeClient,
    namespace: str,
    pod_driver: PodDriver,
) -> None:
    chart_role = kube.get(f"{RBAC}/clusterroles/{RELEASE}")
    reduced_identity(without(chart_role, group, resource, verb))
    try:
        op = start_operator(service_account=REDUCED)
    except (RuntimeError, TimeoutError):
        return  # the operator could not even start: the verb is needed
    with pytest.raises((AssertionError, TimeoutError)):
        tj = run_to_success(kube, pod_driver, namespace, "reduced", timeout=20, operator=op)
        st = tj["status"]
        assert st["phase"] == "Succeeded" and st.get("metrics") == TERMINATION["metrics"], st

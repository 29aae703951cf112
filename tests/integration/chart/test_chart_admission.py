"""No stronger than pods: the chart's ValidatingAdmissionPolicy on the real API server.

A user allowed only to create kubeforge objects is refused for each of the three kinds, with a
message naming the rule; a user who may create pods is admitted; the operator's own
ServiceAccount (trials, promotions) is admitted though it may not create pods; a spec change
is checked, a metadata change is not. Strict mode (a chart value) also wants `get` on each
Secret the spec names. Requests are server-side dry runs: admission runs, nothing is stored.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubeforge_cluster.chartops import NAMESPACE, RELEASE, install
from kubeforge_cluster.client import ApiError, KubeClient
from kubeforge_cluster.helm import Helm

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
RBAC = "/apis/rbac.authorization.k8s.io/v1"
RULE = "requires create pods in"


def objects(namespace: str) -> list[dict[str, Any]]:
    """One valid object of each kind (the examples, made small)."""
    out = []
    for name in ("trainingjob.yaml", "tuningstudy.yaml", "modeldeployment.yaml"):
        doc = next(d for d in yaml.safe_load_all((ROOT / "examples" / name).read_text()) if d)
        doc["metadata"] = {"name": "adm-" + doc["kind"].lower(), "namespace": namespace}
        out.append(doc)
    return out


def grant(kube: KubeClient, namespace: str, user: str, rules: list[dict[str, Any]]) -> None:
    name = f"adm-{user}"
    kube.post(f"{RBAC}/namespaces/{namespace}/roles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": name}, "rules": rules})
    kube.post(f"{RBAC}/namespaces/{namespace}/rolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})


KUBEFORGE_CREATE = {"apiGroups": ["kubeforge.io"],
                    "resources": ["trainingjobs", "tuningstudies", "modeldeployments"],
                    "verbs": ["create", "get", "update", "patch"]}


def dry_create(kubectl: Any, obj: dict[str, Any], user: str) -> Any:
    return kubectl.result("create", "--dry-run=server", "-o", "name", f"--as={user}", "-f", "-",
                          input=yaml.safe_dump(obj))


def enforced(kubectl: Any, obj: dict[str, Any], user: str) -> Any:
    """The first answer after the policy is in force (it takes a moment after install)."""
    deadline = time.monotonic() + 30
    while True:
        res = dry_create(kubectl, obj, user)
        if res.returncode != 0 or time.monotonic() > deadline:
            return res
        time.sleep(0.5)


def test_only_who_may_create_pods_may_create_what_runs_pods(
    release: str, kube: KubeClient, kubectl: Any, namespace: str
) -> None:
    grant(kube, namespace, "alice", [KUBEFORGE_CREATE])
    grant(kube, namespace, "bob", [KUBEFORGE_CREATE,
                                   {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}])
    docs = objects(namespace)
    first = enforced(kubectl, docs[0], "alice")
    assert first.returncode != 0
    for obj in docs:
        res = dry_create(kubectl, obj, "alice")
        assert res.returncode != 0, (obj["kind"], res.stdout)
        msg = res.stderr
        assert f"creating a {obj['kind']} runs pods as spec.pod.serviceAccountName" in msg, msg
        assert f"{RULE} {namespace}" in msg and "alice" in msg and "no-stronger-than-pods" in msg
        ok = dry_create(kubectl, obj, "bob")
        assert ok.returncode == 0, (obj["kind"], ok.stderr)
    # the operator's own identity (trials, promotions) may not create pods, and is admitted
    sa = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
    can = kubectl.result("auth", "can-i", "create", "pods", "-n", namespace, f"--as={sa}")
    assert can.stdout.strip() == "no"
    for obj in docs[:1]:
        res = dry_create(kubectl, obj, sa)
        assert res.returncode == 0, res.stderr


def test_spec_changes_are_checked_metadata_changes_are_not(
    release: str, kube: KubeClient, kubectl: Any, namespace: str
) -> None:
    grant(kube, namespace, "carol", [KUBEFORGE_CREATE])
    tj = objects(namespace)[0]
    tj["spec"]["suspend"] = True  # nothing runs
    kube.post(f"/apis/kubeforge.io/v1alpha1/namespaces/{namespace}/trainingjobs", tj)
    path = f"/apis/kubeforge.io/v1alpha1/namespaces/{namespace}/trainingjobs/{tj['metadata']['name']}"
    probe = {**tj, "metadata": {**tj["metadata"], "name": "adm-probe"}}
    assert enforced(kubectl, probe, "carol").returncode != 0
    label = kubectl.result("label", "trainingjob", tj["metadata"]["name"], "-n", namespace,
                           "team=a", "--as=carol")
    assert label.returncode == 0, label.stderr
    change = kubectl.result("patch", "trainingjob", tj["metadata"]["name"], "-n", namespace,
                            "--type=merge", "-p", '{"spec": {"suspend": false}}', "--as=carol")
    assert change.returncode != 0 and RULE in change.stderr, change.stderr
    assert kube.get(path)["spec"]["suspend"] is True


@pytest.fixture
def strict(helm: Helm, release: str, tmp_path: Path) -> Iterator[None]:
    artifacts = tmp_path / "artifacts"
    install(helm, {"artifactStore": f"file://{artifacts}/", "operator": {"resyncSeconds": 30},
                   "admissionPolicy": {"mode": "strict"}}, upgrade=True)
    yield
    install(helm, {"artifactStore": f"file://{artifacts}/", "operator": {"resyncSeconds": 30}},
            upgrade=True)


def test_strict_mode_also_wants_each_secret_the_spec_names(
    strict: None, kube: KubeClient, kubectl: Any, namespace: str
) -> None:
    pods = {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}
    grant(kube, namespace, "dave", [KUBEFORGE_CREATE, pods])
    grant(kube, namespace, "erin", [KUBEFORGE_CREATE, pods, {
        "apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
        "resourceNames": ["dataset-creds", "pull-creds"]}])
    tj = objects(namespace)[0]
    tj["spec"]["dataset"] = {"uri": "s3://bucket/digits/", "secretRef": "dataset-creds"}
    tj["spec"]["pod"] = {"imagePullSecrets": ["pull-creds"]}
    res = enforced(kubectl, tj, "dave")
    assert res.returncode != 0 and "dataset-creds, pull-creds" in res.stderr, res.stderr
    assert "strict" in res.stderr
    ok = dry_create(kubectl, tj, "erin")
    assert ok.returncode == 0, ok.stderr
    # a spec naming no Secret needs no Secret right
    plain = objects(namespace)[0]
    assert dry_create(kubectl, plain, "dave").returncode == 0


def test_the_policy_is_the_charts_and_type_checks(release: str, kube: KubeClient) -> None:
    """The policy is the chart's (named after the release), fails closed, and the API server's
    type check of its CEL against the three CRDs found nothing to warn about."""
    try:
        got = kube.get(f"/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/"
                       f"{RELEASE}-no-stronger-than-pods")
    except ApiError as exc:  # pragma: no cover - the message says what is missing
        raise AssertionError(f"the chart's admission policy is missing: {exc}") from None
    assert got["spec"]["failurePolicy"] == "Fail"
    warnings = (got.get("status") or {}).get("typeChecking", {}).get("expressionWarnings") or []
    assert warnings == [], warnings

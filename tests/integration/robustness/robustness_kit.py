"""Plain helpers of the robustness suite (constants, object builders, waits), shared by its
conftest and its tests. A module of its own: importing `conftest` by name picks up whichever
conftest was imported first when several folders run in one session."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from kf_operator_process import OperatorProcess
from kubeforge_cluster.client import ApiError, KubeClient

ROOT = Path(__file__).resolve().parents[3]
RBAC = "/apis/rbac.authorization.k8s.io/v1"
TJ_API = "/apis/kubeforge.io/v1alpha1"
OPERATOR_NS = "kubeforge-system"
OPERATOR_SA = "kubeforge-operator"
ROLE = "kubeforge-robustness"
# What the operator calls (the chart's ClusterRole, plus the Lease), in rules a test can edit.
RULES: list[dict[str, Any]] = [
    {"apiGroups": ["kubeforge.io"], "resources": ["*"], "verbs": ["*"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["*"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": [""], "resources": ["services", "serviceaccounts", "events"], "verbs": ["*"]},
    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": ["get", "create"]},
    {"apiGroups": ["apps", "autoscaling", "policy"], "resources": ["*"], "verbs": ["*"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
]


def create_namespace(kube: KubeClient, name: str) -> str:
    with contextlib.suppress(ApiError):
        kube.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    kube.wait_for(
        f"ServiceAccount {name}/default",
        lambda: _exists(kube, f"/api/v1/namespaces/{name}/serviceaccounts/default"),
        timeout=30,
    )
    return name


def _exists(kube: KubeClient, path: str) -> bool:
    try:
        kube.get(path)
    except ApiError:
        return False
    return True


def set_role(kube: KubeClient, rules: list[dict[str, Any]]) -> None:
    """The operator's ClusterRole now holds `rules` (replaced in place)."""
    body: dict[str, Any] = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": ROLE}, "rules": rules}
    try:
        current = kube.get(f"{RBAC}/clusterroles/{ROLE}")
    except ApiError:
        kube.post(f"{RBAC}/clusterroles", body)
        return
    body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    kube.put(f"{RBAC}/clusterroles/{ROLE}", body)


def trainingjob(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"recipe": "mlp-classifier"},
            "dataset": {"uri": "builtin://digits"},
            "hyperparameters": {"lr": 0.01, "epochs": 1},
            "resources": {"cpu": "10m", "memory": "32Mi", "shmSize": "16Mi"},
        },
    }


def post_trainingjob(kube: KubeClient, namespace: str, name: str, tries: int = 60) -> None:
    """Create a TrainingJob, riding out a control-plane outage (a 409 after a lost answer: it
    was created)."""
    for _ in range(tries):
        try:
            kube.post(f"{TJ_API}/namespaces/{namespace}/trainingjobs", trainingjob(name))
            return
        except ApiError as exc:
            if exc.status == 409:
                return
            if exc.status < 500 and exc.status != 429:
                raise
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"TrainingJob {namespace}/{name} not created")


def jobs_by_owner(kube: KubeClient, namespace: str) -> dict[str, int]:
    """TrainingJob name → how many Jobs carry its label."""
    out: dict[str, int] = {}
    for job in kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs")["items"]:
        owner = (job["metadata"].get("labels") or {}).get("kubeforge.io/trainingjob")
        if owner:
            out[owner] = out.get(owner, 0) + 1
    return out


def wait_one_job_each(kube: KubeClient, namespace: str, names: list[str], timeout: float) -> dict[str, int]:
    """Wait until every TrainingJob of `names` has its Job; then exactly one each."""
    def done() -> dict[str, int] | None:
        try:
            have = jobs_by_owner(kube, namespace)
        except (ApiError, OSError):
            return None
        return have if all(n in have for n in names) else None

    try:
        have: dict[str, int] = kube.wait_for(f"{len(names)} Jobs in {namespace}", done, timeout=timeout, interval=0.5)
    except TimeoutError:
        have = jobs_by_owner(kube, namespace)
        missing = sorted(set(names) - set(have))
        raise AssertionError(f"{len(missing)} TrainingJobs without a Job after {timeout}s: {missing[:10]}") from None
    assert {n: c for n, c in have.items() if c != 1} == {}, "a TrainingJob got more than one Job"
    assert set(have) == set(names)
    return have


def metric(op: OperatorProcess, name: str, **labels: str) -> float:
    """Sum of a metric's series whose labels include `labels`."""
    total = 0.0
    for line in op.metrics().splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total

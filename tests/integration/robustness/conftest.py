"""The operator's robustness suite: its own control plane (one of its tests kills etcd and
kube-apiserver), operators started and killed by the tests themselves, and an operator
identity (a ServiceAccount token) that RBAC and API Priority and Fairness apply to (the
admin kubeconfig is system:masters, which both exempt)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kf_operator_process import OperatorProcess
from kubeforge_cluster import binaries
from kubeforge_cluster.chartops import service_account_kubeconfig
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


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A control plane of this module's own (its components are killed and restarted)."""
    if os.environ.get("KUBEFORGE_TEST_KUBECONFIG"):
        pytest.skip("kills the control plane: runs only on the local one")
    try:
        binaries.require_binaries()
    except binaries.MissingBinaries as exc:
        if os.environ.get("KUBEFORGE_REQUIRE_CLUSTER"):
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))
    from kubeforge_cluster.cluster import LocalCluster

    cluster = LocalCluster(name=f"robust-{os.getpid()}", cpu_nodes=4, gpu_nodes=0, verbose=False)
    before = list(OperatorProcess.running)
    cluster.start()
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            "crd/trainingjobs.kubeforge.io", "crd/tuningstudies.kubeforge.io",
        )
        yield cluster
    finally:
        # only the operators started against this cluster: the session's operator (of the
        # shared cluster) keeps running for the suites after this one
        for op in list(OperatorProcess.running):
            if op not in before:
                op.stop()
        cluster.stop()


@pytest.fixture(scope="module")
def admin(own_cluster: Any) -> KubeClient:
    client: KubeClient = own_cluster.client
    return client


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


@pytest.fixture
def namespace(admin: KubeClient, request: pytest.FixtureRequest) -> str:
    name = "rb-" + request.node.name.split("[")[0].replace("_", "-")[5:40].strip("-")
    return create_namespace(admin, name)


def set_role(kube: KubeClient, rules: list[dict[str, Any]]) -> None:
    """The operator's ClusterRole now holds `rules` (replaced in place)."""
    body = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": ROLE}, "rules": rules}
    try:
        current = kube.get(f"{RBAC}/clusterroles/{ROLE}")
    except ApiError:
        kube.post(f"{RBAC}/clusterroles", body)
        return
    body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    kube.put(f"{RBAC}/clusterroles/{ROLE}", body)


@pytest.fixture(scope="module")
def operator_kubeconfig(own_cluster: Any, admin: KubeClient, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig of the ServiceAccount kubeforge-system/kubeforge-operator, bound to RULES."""
    create_namespace(admin, OPERATOR_NS)
    with contextlib.suppress(ApiError):
        admin.post(f"/api/v1/namespaces/{OPERATOR_NS}/serviceaccounts",
                   {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": OPERATOR_SA}})
    set_role(admin, RULES)
    with contextlib.suppress(ApiError):
        admin.post(f"{RBAC}/clusterrolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": ROLE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NS}],
        })
    path = tmp_path_factory.mktemp("sa") / "operator.kubeconfig"
    return service_account_kubeconfig(own_cluster, path, service_account=OPERATOR_SA, namespace=OPERATOR_NS)


@pytest.fixture
def start_operator(
    own_cluster: Any, operator_kubeconfig: Path, tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    """Start an operator process (as the ServiceAccount); every one is stopped after the test."""
    started: list[OperatorProcess] = []

    def start(name: str = "op", admin_identity: bool = False, **env: str) -> OperatorProcess:
        kubeconfig = str(own_cluster.kubeconfig if admin_identity else operator_kubeconfig)
        op = OperatorProcess(kubeconfig, tmp_path / f"{name}.log", **{"KUBEFORGE_RESYNC_SECONDS": "30", **env})
        started.append(op)
        return op.start()

    yield start
    for op in started:
        op.stop()


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

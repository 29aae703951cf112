"""The operator's robustness suite: its own control plane (one of its tests kills etcd and
kube-apiserver), operators started and killed by the tests themselves, and an operator
identity (a ServiceAccount token) that RBAC and API Priority and Fairness apply to (the
admin kubeconfig is system:masters, which both exempt)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kf_operator_process import OperatorProcess
from kubeforge_cluster import binaries
from kubeforge_cluster.chartops import service_account_kubeconfig
from kubeforge_cluster.client import ApiError, KubeClient
from robustness_kit import (
    OPERATOR_NS,
    OPERATOR_SA,
    RBAC,
    ROLE,
    ROOT,
    RULES,
    create_namespace,
    set_role,
)


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
    from kubeforge_cluster.kubectlops import wait_crds_established

    cluster = LocalCluster(name=f"robust-{os.getpid()}", cpu_nodes=4, gpu_nodes=0, verbose=False)
    before = list(OperatorProcess.running)
    cluster.start()
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        wait_crds_established(
            cluster.client,
            ["trainingjobs.kubeforge.io", "tuningstudies.kubeforge.io"],
            timeout=120,
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


@pytest.fixture
def namespace(admin: KubeClient, request: pytest.FixtureRequest) -> str:
    name = "rb-" + request.node.name.split("[")[0].replace("_", "-")[5:40].strip("-")
    return create_namespace(admin, name)


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

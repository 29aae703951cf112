"""Fixtures of the chart's integration tests: the chart installed with the real helm, and the
real operator running with the chart's RBAC (a token of the chart's ServiceAccount).

kwok's pods are fake, so the chart's operator pod runs no code: the tests run `kubeforge-operator`
as a local process with the env the chart's Deployment sets and the chart's identity.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubeforge_cluster.chartops import (
    RELEASE,
    OperatorProcess,
    helm_for,
    install,
    operator_env_from_release,
    service_account_kubeconfig,
)
from kubeforge_cluster.client import KubeClient
from kubeforge_cluster.helm import Helm, find_helm


@pytest.fixture(scope="module", autouse=True)
def only_the_charts_operator() -> Iterator[None]:
    """The chart's tests prove what the chart's RBAC allows: no other operator (such as the
    admin-powered session operator of the other suites) may reconcile meanwhile. (Module scope:
    this folder is not a Python package, so "package" scope would last the whole session.)"""
    from kf_operator_process import OperatorProcess as SessionOperator

    paused = list(SessionOperator.running)
    for op in paused:
        op.stop()
    yield
    for op in paused:
        op.start()


@pytest.fixture(scope="session")
def helm(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    if find_helm("helm") is None:
        pytest.skip("no helm binary (make cluster-bins)")
    return helm_for(cluster, home=tmp_path_factory.mktemp("helm"))


@pytest.fixture(scope="session")
def release(helm: Helm, tmp_path_factory: pytest.TempPathFactory, kube: KubeClient) -> str:
    """`helm install kubeforge charts/kubeforge -n kubeforge-system` (once per session)."""
    artifacts = tmp_path_factory.mktemp("artifacts")
    install(
        helm,
        {"artifactStore": f"file://{artifacts}/", "operator": {"resyncSeconds": 30}},
        upgrade=True,
    )
    for crd in ("trainingjobs", "tuningstudies", "modeldeployments"):
        kube.wait_for(
            f"CRD {crd} established",
            lambda crd=crd: any(
                c["type"] == "Established" and c["status"] == "True"
                for c in kube.get(
                    f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}.kubeforge.io"
                )
                .get("status", {})
                .get("conditions", [])
            ),
        )
    return RELEASE


@pytest.fixture
def start_operator(
    cluster: Any, helm: Helm, release: str, tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    """Start `kubeforge-operator` locally with the chart's env and a ServiceAccount token."""
    started: list[OperatorProcess] = []

    def start(service_account: str = RELEASE, **env: str) -> OperatorProcess:
        kc = service_account_kubeconfig(
            cluster, tmp_path / f"{service_account}.kubeconfig", service_account=service_account
        )
        rendered = operator_env_from_release(helm)
        rendered.update({"KUBEFORGE_LOG_FORMAT": "plain", **env})
        op = OperatorProcess(kc, rendered, tmp_path / f"operator-{len(started)}.log")
        started.append(op)
        return op.start()

    yield start
    for op in started:
        op.stop()

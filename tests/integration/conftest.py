"""Fixtures shared by the integration suites: the kubeforge CRDs installed in the test cluster, and
the operator running as a real process (`operator`, one per session)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kf_operator_process import OperatorProcess

ROOT = Path(__file__).resolve().parents[2]
CRD_NAMES = ("trainingjobs", "tuningstudies", "modeldeployments")


@pytest.fixture(scope="session")
def kubeforge_crds(cluster: Any, kubectl: Any) -> list[str]:
    """Install (server-side apply) the generated CRDs once per session and wait until served."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    names = [f"{n}.kubeforge.io" for n in CRD_NAMES]
    kubectl("wait", "--for=condition=Established", "--timeout=60s",
            *[f"crd/{n}" for n in names])
    return names


@pytest.fixture(scope="session")
def operator(
    cluster: Any, kubeforge_crds: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(
        str(cluster.kubeconfig), tmp_path_factory.mktemp("operator") / "operator.log"
    )
    op.start()
    yield op
    op.stop()

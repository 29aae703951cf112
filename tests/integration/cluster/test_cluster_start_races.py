"""Starting a control plane while other processes take ports: free_port() names a port that is
free now, and a component binds it a moment later; a second cluster starting at the same time
(parallel test sessions, the demo beside a test run) can take it in between."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubeforge_cluster import binaries
from kubeforge_cluster import cluster as cluster_mod

pytestmark = pytest.mark.integration


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other process holds (listening) for the whole test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_a_port_taken_between_pick_and_bind_means_fresh_ports_not_a_failure(
    taken_port: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if os.environ.get("KUBEFORGE_TEST_KUBECONFIG"):
        pytest.skip("starts a control plane of its own: runs only where the binaries are")
    try:
        binaries.require_binaries()
    except binaries.MissingBinaries as exc:
        pytest.skip(str(exc))
    real_free_port = cluster_mod.free_port
    handed_out: list[int] = []

    def racing_free_port() -> int:
        # the 5th port of the first start (the scheduler's) is the one another process took
        port = taken_port if len(handed_out) == 4 else real_free_port()
        handed_out.append(port)
        return port

    monkeypatch.setattr(cluster_mod, "free_port", racing_free_port)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    local = cluster_mod.LocalCluster(name="port-race", cpu_nodes=1, gpu_nodes=0, verbose=False)
    local.start()
    try:
        assert handed_out.count(taken_port) == 1
        assert local.ports["scheduler"] != taken_port
        assert len(handed_out) >= 12  # a second set of ports was picked
        assert local.client.get("/api/v1/nodes")["items"]
    finally:
        local.stop()

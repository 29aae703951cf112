"""kubeforge_cluster.portforward against a stand-in kubectl: the local port is read from
kubectl's own announcement, the arguments target loopback, and kubectl is stopped on exit."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
from kubeforge_cluster import portforward


def _fake_kubectl(tmp_path: Path, script: str) -> Path:
    exe = tmp_path / "kubectl"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(0o755)
    return exe


def test_yields_the_announced_port_and_stops_kubectl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = tmp_path / "args"
    exe = _fake_kubectl(
        tmp_path,
        f'echo "$@" > {args}\necho "Forwarding from 127.0.0.1:43210 -> 8080"\nexec sleep 30\n',
    )
    monkeypatch.setattr(portforward, "kubectl_bin", lambda cluster: str(exe))
    cluster = types.SimpleNamespace(kubeconfig=tmp_path / "kubeconfig")
    with portforward.port_forward(cluster, "ns1", "service/digits", 8080) as port:
        assert port == 43210
    assert args.read_text().split() == [
        "--kubeconfig", str(tmp_path / "kubeconfig"), "-n", "ns1", "port-forward",
        "--address", "127.0.0.1", "service/digits", ":8080",
    ]  # fmt: skip


def test_kubectl_that_fails_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = _fake_kubectl(tmp_path, 'echo "error: services \\"nope\\" not found"\nexit 1\n')
    monkeypatch.setattr(portforward, "kubectl_bin", lambda cluster: str(exe))
    cluster = types.SimpleNamespace(kubeconfig=tmp_path / "kubeconfig")
    with (
        pytest.raises(RuntimeError, match="not found"),
        portforward.port_forward(cluster, "ns1", "service/nope", 8080, timeout=5),
    ):
        pass

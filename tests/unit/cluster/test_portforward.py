"""kubeforge_cluster.portforward against a stand-in kubectl: the local port is read from
kubectl's own announcement, the arguments target loopback, and kubectl is stopped on exit."""

from __future__ import annotations

import subprocess
import types
from pathlib import Path
from typing import Any

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


def test_an_error_kubectl_printed_before_exiting_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kubectl that fails fast has often exited before its output is read: the error must still
    be in the message (a loaded machine showed only "did not start: []")."""
    exe = _fake_kubectl(tmp_path, 'echo "error: pods \\"gone\\" not found"\nexit 1\n')
    monkeypatch.setattr(portforward, "kubectl_bin", lambda cluster: str(exe))

    class ExitedFirst(subprocess.Popen):  # type: ignore[type-arg]
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.wait(10)  # the race, made certain: kubectl is gone before the first look

    monkeypatch.setattr(portforward.subprocess, "Popen", ExitedFirst)
    cluster = types.SimpleNamespace(kubeconfig=tmp_path / "kubeconfig")
    with (
        pytest.raises(RuntimeError, match=r'exited 1: .*pods "gone" not found'),
        portforward.port_forward(cluster, "ns1", "pod/gone", 8080, timeout=5),
    ):
        pass

"""`kubectl port-forward` to a Service as a context manager: how the host reaches a server in the
cluster (REALPODS.md: from the host, loopback or a pod's own address, never a ClusterIP)."""

from __future__ import annotations

import re
import select
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .chartops import kubectl_bin

_FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) ->")


@contextmanager
def port_forward(
    cluster: Any, namespace: str, target: str, remote_port: int, timeout: float = 30
) -> Iterator[int]:
    """Forward a free loopback port to ``target`` (``service/NAME`` or ``pod/NAME``) port
    ``remote_port``; yields the local port and stops kubectl on exit."""
    cmd = [
        kubectl_bin(cluster),
        "--kubeconfig", str(cluster.kubeconfig),
        "-n", namespace,
        "port-forward", "--address", "127.0.0.1", target, f":{remote_port}",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    try:
        seen: list[str] = []
        end = time.monotonic() + timeout
        port = 0
        while not port:
            left = end - time.monotonic()
            if proc.poll() is not None:
                # kubectl exited: what it said last (its error) is still in the pipe
                seen += [ln.strip() for ln in proc.stdout.read().splitlines()]
                raise RuntimeError(
                    f"kubectl port-forward {target} exited {proc.returncode}: {seen}"
                )
            if left <= 0:
                raise RuntimeError(f"kubectl port-forward {target} did not start: {seen}")
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if ready:
                line = proc.stdout.readline()
                seen.append(line.strip())
                m = _FORWARDING.search(line)
                if m:
                    port = int(m.group(1))
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

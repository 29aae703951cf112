"""Start/stop of the real node: a start after a killed (crashed) run works, and a stop leaves no
process, mount, cgroup, bridge, route or rule behind (REALPODS §9.4, items 25-28)."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest
from kubeforge_cluster.realnode import RealNode, default_run_dir, net
from kubeforge_cluster.realnode.components import KUBELET_HEALTHZ_PORT, KUBELET_PORT
from realpods_support import Kube, pod, skip_reason

pytestmark = pytest.mark.e2e


def _leftovers(run_dir: Path, baseline: net.Baseline) -> list[str]:
    p = net.check_after_teardown(baseline)
    key = str(run_dir).encode()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if key in (d / "cmdline").read_bytes():
                    p.append(f"process left: {d.name} {(d / 'cmdline').read_bytes()[:120]!r}")
            except OSError:
                pass
    mounts = Path("/proc/mounts").read_text()
    if str(run_dir) in mounts or "/containerd/" in mounts:
        p.append(
            "mounts left: "
            + "; ".join(
                ln for ln in mounts.splitlines() if str(run_dir) in ln or "/containerd/" in ln
            )
        )
    for h in Path("/sys/fs/cgroup").iterdir():
        if (h / "kubepods").exists():
            p.append(f"cgroup left: {h / 'kubepods'}")
    for host, port in ((net.NODE_IP, KUBELET_PORT), ("127.0.0.1", KUBELET_HEALTHZ_PORT)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                p.append(f"port {port} still bound ({host})")
    return p


def test_start_after_killed_run_then_clean_stop() -> None:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    run_dir = default_run_dir("e2e-lifecycle")
    baseline = net.Baseline.capture()
    first = RealNode(run_dir, name="e2e-lifecycle")
    first.start()
    try:
        kb = Kube(first, "default")
        kb.apply(pod("sleeper", ["sleep", "3600"]))
        kb.wait("sleeper running", lambda: kb.get("pod", "sleeper")["status"]["phase"] == "Running")
    except BaseException:
        first.stop()
        raise
    # crash: SIGKILL every component (control plane included); pods, mounts, rules stay
    for p in first.procs + (first.cluster.procs if first.cluster else []):
        if p.alive():
            os.kill(p.pid, signal.SIGKILL)
    time.sleep(0.5)
    assert net.bridge_exists()

    second = RealNode(run_dir, name="e2e-lifecycle")
    t = time.monotonic()
    second.start()  # cleans the leftovers first
    started = time.monotonic() - t
    try:
        kb = Kube(second, "default")
        kb.wait("default SA", lambda: kb.k("get", "sa", "default"))
        kb.apply(pod("after-crash", ["sh", "-c", "echo alive"]))
        t_ = kb.wait("after-crash done", lambda: kb.terminated("after-crash"))
        assert t_["exitCode"] == 0
    finally:
        t = time.monotonic()
        second.stop()
        stopped = time.monotonic() - t
    print(f"start after crash {started:.1f}s, stop {stopped:.1f}s")
    assert _leftovers(run_dir, baseline) == []

"""Stopping a real node and cleaning what a crashed run left: processes, mounts, cgroups, rules.

Module level: works from a run dir's state file alone (no RealNode needed)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .. import binaries as cp_binaries
from ..cluster import LocalCluster
from ..procs import Proc, pid_alive
from . import bins, net
from .runstate import OWNER_FILE, STATE_FILE, NodeStartError, cache_root, procs_from_state


def _kill(p: Proc, sigterms: int = 1, grace: float = 10.0) -> None:
    if not p.alive():
        if p.popen is not None:
            p.popen.wait()
        return
    for i in range(sigterms):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGTERM)
        end = time.monotonic() + (grace if i == sigterms - 1 else 2.0)
        while time.monotonic() < end and p.alive():
            time.sleep(0.05)
        if not p.alive():
            break
    if p.alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)
        end = time.monotonic() + 5
        while time.monotonic() < end and p.alive():
            time.sleep(0.05)
    if p.popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.popen.wait(timeout=5)


def _rig_pids(run_dir: Path, exes: set[str]) -> list[tuple[int, str]]:
    """PIDs whose command line names this run dir (shims, strays) and whose exe is ours."""
    out = []
    key = str(run_dir).encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if key in cmd:
            exe = Path(cmd.split(b"\0")[0].decode(errors="replace")).name
            if exe in exes:
                out.append((int(d.name), exe))
    return out


def _umount_under(prefixes: list[Path]) -> int:
    n = 0
    for _ in range(5):
        mounts = []
        for line in Path("/proc/mounts").read_text().splitlines():
            mp = line.split()[1].replace("\\040", " ")
            if any(mp == str(p) or mp.startswith(str(p) + "/") for p in prefixes):
                mounts.append(mp)
        if not mounts:
            break
        for mp in sorted(mounts, key=len, reverse=True):
            if subprocess.run(["umount", mp], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", mp], capture_output=True)
            n += 1
    return n


def _kill_kubepods_processes() -> int:
    """SIGKILL what still runs in the kubepods cgroups (containers orphaned by a crashed run:
    their shims were killed, so nobody else will stop them)."""
    pids: set[int] = set()
    root = Path("/sys/fs/cgroup")
    for h in [root, *root.iterdir()] if root.exists() else []:
        kp = h / "kubepods"
        if kp.is_dir():
            for f in kp.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(x) for x in f.read_text().split())
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 5
    while pids and time.monotonic() < end:
        pids = {p for p in pids if pid_alive(p)}
        time.sleep(0.05)
    return len(pids)


def _remove_kubepods_cgroups() -> None:
    _kill_kubepods_processes()
    root = Path("/sys/fs/cgroup")
    for h in [root, *root.iterdir()] if root.exists() else []:
        kp = h / "kubepods"
        if not kp.is_dir():
            continue
        for d in sorted(
            (p for p in kp.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            kp.rmdir()


def _remove_hardcoded_paths() -> None:
    """Paths the runtime writes outside the run dir (go-cni cache, device plugins, shims)."""
    res = Path("/var/lib/cni/results")
    if res.is_dir():
        for f in res.glob(f"{net.CNI_NETWORK}-*"):
            with contextlib.suppress(OSError):
                f.unlink()
    for d in (
        res,
        Path("/var/lib/cni"),
        Path("/run/containerd/s"),
        Path("/run/containerd/fifo"),
        Path("/run/containerd/runc/k8s.io"),
        Path("/run/containerd/runc"),
        Path("/run/containerd"),
    ):
        with contextlib.suppress(OSError):
            d.rmdir()
    dp = Path("/var/lib/kubelet/device-plugins")
    for f in (dp / "kubelet.sock", dp / "DEPRECATION"):
        with contextlib.suppress(OSError):
            f.unlink()
    for d in (
        dp,
        Path("/var/lib/kubelet/plugins_registry"),
        Path("/var/lib/kubelet/plugins"),
        Path("/var/lib/kubelet/pod-resources"),
        Path("/var/lib/kubelet"),
    ):
        with contextlib.suppress(OSError):
            if d.is_dir():
                for f in d.glob("*.sock"):
                    f.unlink()
                d.rmdir()


def teardown(
    run_dir: Path,
    cluster: LocalCluster | None = None,
    *,
    verbose: bool = True,
    procs: list[Proc] | None = None,
) -> dict[str, float]:
    t0 = time.monotonic()
    timings: dict[str, float] = {}

    def lap(what: str) -> None:
        timings[what] = round(time.monotonic() - t0, 2)
        if verbose:
            print(f"[kubeforge-realnode] stop: {what} {timings[what]:.1f}s", file=sys.stderr)

    procs = list(procs or []) or procs_from_state(run_dir)
    by_name = {p.name: p for p in procs}
    cp_dir = run_dir / "cp"
    if cluster is None and (cp_dir / "state.json").exists():
        cluster = LocalCluster.attach(cp_dir)
    kubelet = by_name.get("kubelet")
    kubeconfig = cp_dir / "kubeconfig"
    # 1. pods away while the kubelet still runs (it unmounts volumes, CNI DEL frees IPs)
    if kubelet is not None and kubelet.alive() and cluster is not None and cluster.running():
        kubectl = cp_binaries.find_binary("kubectl")
        if kubectl:
            subprocess.run(
                [
                    str(kubectl),
                    f"--kubeconfig={kubeconfig}",
                    "delete",
                    "deploy,rs,sts,ds,job,cronjob",
                    "--all",
                    "-A",
                    "--cascade=orphan",
                    "--wait=false",
                ],
                capture_output=True,
                timeout=60,
            )
            subprocess.run(
                [
                    str(kubectl),
                    f"--kubeconfig={kubeconfig}",
                    "delete",
                    "pod",
                    "--all",
                    "-A",
                    "--grace-period=1",
                    "--wait=true",
                    "--timeout=40s",
                ],
                capture_output=True,
                timeout=60,
            )
        lap("pods-deleted")
    # 2. CoreDNS and kube-proxy, forwarding off, kube-proxy's rules
    for n in ("coredns", "kube-proxy"):
        if n in by_name:
            _kill(by_name[n])
    with contextlib.suppress(OSError):
        net.sysctl_set(net.SYSCTL_FORWARD, "0")
    kp_bin = by_name["kube-proxy"].exe if "kube-proxy" in by_name else None
    if kp_bin and Path(kp_bin).exists():
        subprocess.run(
            [kp_bin, "--cleanup", "--proxy-mode=iptables"], capture_output=True, timeout=60
        )
    lap("proxy-dns-stopped")
    # 3. kubelet (may need a 2nd SIGTERM), sandboxes, containerd, shims
    if kubelet is not None:
        _kill(kubelet, sigterms=2)
    lap("kubelet-stopped")
    ctd = by_name.get("containerd")
    crictl_cfg = run_dir / "crictl.yaml"
    if ctd is not None and ctd.alive() and crictl_cfg.exists():
        crictl = bins.default_bin_dir() / "crictl"
        if crictl.exists():
            subprocess.run(
                [str(crictl), "--config", str(crictl_cfg), "rmp", "-a", "-f"],
                capture_output=True,
                timeout=120,
            )
    if ctd is not None:
        _kill(ctd)
    for pid, _exe in _rig_pids(
        run_dir,
        {"containerd-shim-runc-v2", "containerd", "kubelet", "kube-proxy", "coredns", "pause"},
    ):
        _kill(Proc("stray", pid, _exe, ""), grace=3)
    lap("containerd-stopped")
    # 4. mounts, cgroups
    st = {}
    with contextlib.suppress(OSError, ValueError):
        st = json.loads((run_dir / STATE_FILE).read_text())
    ctd_root = Path(st.get("containerd_root") or cache_root() / "node" / "containerd")
    _kill_kubepods_processes()
    _umount_under([run_dir, ctd_root])
    _remove_kubepods_cgroups()
    lap("mounts-cgroups-cleaned")
    # 5. rules (guards, KUBE-*), then the control plane (bound to the bridge address), network
    policy = "ACCEPT"
    with contextlib.suppress(OSError, ValueError, TypeError):
        base = net.Baseline.load(run_dir / "baseline.json")
        if ":FORWARD DROP" in base.iptables:
            policy = "DROP"
    net.remove_rules(forward_policy=policy)
    lap("rules-removed")
    if cluster is not None:
        cluster.stop(remove=False)
    lap("control-plane-stopped")
    net.network_down()
    _remove_hardcoded_paths()
    with contextlib.suppress(OSError):
        owner = json.loads(OWNER_FILE.read_text())
        if owner.get("run_dir") == str(run_dir):
            OWNER_FILE.unlink()
    with contextlib.suppress(OSError):
        (run_dir / STATE_FILE).unlink()
    lap("done")
    return timings


def live_owner() -> Path | None:
    """Run dir of another real node that is still running (its kubelet or containerd alive),
    or None when the bridge's owner is gone (crashed/killed) or there is none."""
    try:
        run_dir = Path(json.loads(OWNER_FILE.read_text())["run_dir"])
    except (OSError, ValueError, KeyError):
        return None
    alive = [p for p in procs_from_state(run_dir) if p.name in ("kubelet", "containerd")]
    return run_dir if any(p.alive() for p in alive) else None


def cleanup_leftovers(verbose: bool = True, own_run_dir: Path | None = None) -> bool:
    """Tear down what a crashed/killed run left (found through the owner file). True if any.
    A node that is still running in another run dir is not touched: that raises."""
    try:
        owner = json.loads(OWNER_FILE.read_text())
    except (OSError, ValueError):
        return False
    run_dir = Path(owner["run_dir"])
    live = live_owner()
    if live is not None and own_run_dir is not None and live != own_run_dir:
        raise NodeStartError(
            f"another real node is running ({live}); it owns {net.BRIDGE}. Stop it first "
            f"(`python -m kubeforge_cluster.realnode down --name "
            f"{live.name.removeprefix('kubeforge-realnode-')}` or `make cluster-down NODES=real`)"
        )
    if verbose:
        print(
            f"[kubeforge-realnode] cleaning leftovers of a previous run in {run_dir}",
            file=sys.stderr,
        )
    teardown(run_dir, None, verbose=verbose)
    return True

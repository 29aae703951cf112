"""Whether this machine can run a real node (kernel, privileges, tools, binaries): reads only."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .. import binaries as cp_binaries
from . import bins


class NodeUnsupported(RuntimeError):
    """This machine cannot run a real node (not root, no cgroups/netns, binaries absent)."""


#: ``KUBEFORGE_REALPODS=0`` turns real nodes off on a machine that could run them.
REALPODS_ENV = "KUBEFORGE_REALPODS"


def host_unsupported_reason() -> str | None:
    """Why this host (kernel, privileges) cannot run a real node, whatever gets installed or
    built (None = it can). Reads state only."""
    if os.environ.get(REALPODS_ENV, "1") == "0":
        return f"{REALPODS_ENV}=0 (real pods turned off for this run)"
    if os.geteuid() != 0:
        return "needs root (containers, bridge, iptables)"
    if not Path("/proc/self/ns/net").exists():
        return "no network namespaces"
    cg = Path("/sys/fs/cgroup")
    if not ((cg / "memory").is_dir() or (cg / "cgroup.controllers").is_file()):
        return "no memory cgroup"
    if not Path("/proc/sys/net/bridge").exists() and not _can_bridge():
        return "no bridge netfilter support"
    return None


def unsupported_reason() -> str | None:
    """Why a real node cannot start here (None = it can). Reads state only."""
    host = host_unsupported_reason()
    if host:
        return host
    for tool in ("ip", "iptables", "ip6tables", "nsenter", "ss"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    try:
        bins.require()
        cp_binaries.require_binaries(cp_binaries.CORE_BINARIES)
    except (bins.MissingNodeBinaries, cp_binaries.MissingBinaries) as e:
        return str(e)
    return None


#: Free space a node needs at start: the kubelet's eviction floor (500Mi, components.py) plus
#: room for the images it imports and the pods' logs and writable layers.
MIN_FREE_DISK_BYTES = 2 * 1024**3


def low_disk_reasons(paths: list[Path], need: int = MIN_FREE_DISK_BYTES) -> list[str]:
    """:func:`low_disk_reason` once per filesystem among ``paths`` (they must exist)."""
    devices: set[int] = set()
    reasons = []
    for p in paths:
        dev = p.stat().st_dev
        if dev not in devices:
            devices.add(dev)
            reason = low_disk_reason(p, need)
            if reason:
                reasons.append(reason)
    return reasons


def low_disk_reason(path: Path, need: int = MIN_FREE_DISK_BYTES) -> str | None:
    """Why the filesystem holding ``path`` is too full for a node (None = enough room): said
    at start, so that a full disk reads as such and not as pods evicted minutes later."""
    free = shutil.disk_usage(path).free
    if free >= need:
        return None
    return (
        f"only {free / 1024**3:.1f} GiB free on the filesystem of {path}; a real node needs "
        f"{need / 1024**3:.1f} GiB (its kubelet evicts every pod below 500Mi)"
    )


def _can_bridge() -> bool:
    return Path("/sys/module/bridge").exists()

"""Where a node's files live: the run dir (made afresh per run) and the image store (kept)."""

from __future__ import annotations

import os
from pathlib import Path

from .runstate import cache_root


class NodeLayout:
    """The paths of one node run, computed from its run dir; creates nothing."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def cp_dir(self) -> Path:
        return self.run_dir / "cp"

    @property
    def kubeconfig(self) -> Path:
        return self.cp_dir / "kubeconfig"

    @property
    def containerd_root(self) -> Path:
        """Image store, kept between runs (so big images are imported once)."""
        return Path(
            os.environ.get("KUBEFORGE_CONTAINERD_ROOT") or cache_root() / "node" / "containerd"
        )

    @property
    def containerd_sock(self) -> Path:
        return self.run_dir / "containerd" / "containerd.sock"

    @property
    def registry_hosts_dir(self) -> Path:
        """containerd's ``config_path``: ``<host:port>/hosts.toml`` per registry (read at pull)."""
        return self.run_dir / "containerd" / "certs.d"

    @property
    def conflist(self) -> Path:
        return self.run_dir / "cni" / "net.d" / "10-rpnet.conflist"

    @property
    def corefile(self) -> Path:
        return self.run_dir / "coredns" / "Corefile"

    @property
    def crictl_config(self) -> Path:
        return self.run_dir / "crictl.yaml"

    @property
    def baseline_file(self) -> Path:
        return self.run_dir / "baseline.json"

    @property
    def artifacts_dir(self) -> Path:
        return self.run_dir / "artifacts"

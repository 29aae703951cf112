"""BuildKit (``buildkitd`` + ``buildctl``) builds the project's Dockerfiles, no Docker engine.

    with BuildKitDaemon(insecure_registries=["127.0.0.1:5000"]) as bk:
        bk.build(dockerfile, "127.0.0.1:5000/kubeforge/server:0.1.0", build_args={...})

The daemon is rootful with the node's runc (Debian's ``/usr/sbin/runc``, the one the real node
uses), the overlayfs snapshotter, no containerd worker. RUN steps share the host's network
namespace (``--oci-worker-net host``: no CNI, no bridge, no NAT, so nothing routes anywhere the
host itself would not); the project's builds are offline anyway (wheels come from a local
wheelhouse, ``PIP_NO_INDEX=1``), so a RUN step reaches no one. Registries on loopback are
plain HTTP (``[registry."127.0.0.1:PORT"] http = true``). Build cache: ``~/.cache/kubeforge/buildkit``
(kept; a warm rebuild of unchanged sources is all cache hits).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import shipbins
from .procs import DaemonOwner, ManagedProcess
from .realnode import bins as node_bins


def default_root() -> Path:
    env = os.environ.get("KUBEFORGE_BUILDKIT_ROOT")
    if env:
        return Path(env).expanduser()
    return shipbins.default_bin_dir().parent.parent / "buildkit"


def config_toml(insecure_registries: Iterable[str]) -> str:
    lines = ["# written by kubeforge_cluster.buildkit", ""]
    for host in insecure_registries:
        lines += [f'[registry."{host}"]', "  http = true", "  insecure = true", ""]
    return "\n".join(lines)


def _log(msg: str) -> None:
    print(f"[buildkit] {msg}", flush=True)


@dataclass
class BuildResult:
    ref: str
    digest: str  # manifest digest pushed
    seconds: float
    log: str


class BuildKitDaemon(DaemonOwner):
    """A buildkitd for the lifetime of the ``with`` block (socket in ``run_dir``)."""

    def __init__(
        self,
        run_dir: Path | None = None,
        *,
        root: Path | None = None,
        insecure_registries: Iterable[str] = (),
        keep_storage_mb: int = 3000,
    ) -> None:
        super().__init__(run_dir, "kubeforge-buildkit-")
        self.root = Path(root or default_root())
        self.insecure_registries = list(insecure_registries)
        #: build cache kept (GC above it): the CPU images need ~2 GB, the trainer ~16 GB (ship.TRAINER_CACHE_MB)
        self.keep_storage_mb = keep_storage_mb
        self.bins = shipbins.require("buildkitd", "buildctl")

    @property
    def address(self) -> str:
        return f"unix://{self.run_dir / 'buildkitd.sock'}"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "buildkitd.log"

    def start(self, timeout: float = 60) -> BuildKitDaemon:
        if os.geteuid() != 0:
            raise RuntimeError("buildkitd runs rootful here (overlayfs, runc): run as root")
        runc = node_bins.find_runc()
        if runc is None:
            raise RuntimeError("runc not found: `apt-get install runc` (or make node-bins)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        cfg = self.run_dir / "buildkitd.toml"
        cfg.write_text(config_toml(self.insecure_registries))
        args = [
            str(self.bins["buildkitd"]),
            "--config",
            str(cfg),
            "--root",
            str(self.root),
            "--addr",
            self.address,
            "--containerd-worker=false",
            "--oci-worker=true",
            f"--oci-worker-binary={runc}",
            "--oci-worker-snapshotter=overlayfs",
            "--oci-worker-net=host",
            "--oci-worker-gc=true",
            f"--oci-worker-gc-keepstorage={self.keep_storage_mb}",
        ]
        self._start_daemon(
            ManagedProcess("buildkitd", args, log_path=self.log_path, nice=10, stop_grace=30),
            self._workers_ready,
            timeout=timeout,
            poll_interval=0.5,
            log_tail_chars=3000,
            not_ready=f"buildkitd not ready after {timeout}s (log: {self.log_path})",
        )
        return self

    def _workers_ready(self) -> bool:
        r = subprocess.run(
            [str(self.bins["buildctl"]), "--addr", self.address, "debug", "workers"],
            capture_output=True,
            text=True,
        )
        return r.returncode == 0 and "linux/amd64" in r.stdout

    def prune(self) -> str:
        """Drop build cache above ``keep_storage_mb`` now (GC otherwise runs after builds)."""
        r = subprocess.run(
            [
                str(self.bins["buildctl"]),
                "--addr",
                self.address,
                "prune",
                f"--keep-storage={self.keep_storage_mb}",
            ],
            capture_output=True,
            text=True,
        )
        return r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr.strip()

    def build(
        self,
        dockerfile: Path,
        ref: str,
        *,
        context: Path,
        build_args: Mapping[str, str] | None = None,
        named_contexts: Mapping[str, Path] | None = None,
        push: bool = True,
        archive: Path | None = None,
        log_file: Path | None = None,
    ) -> BuildResult:
        """``buildctl build`` of ``dockerfile`` (context: ``context``); push ``ref``, or with
        ``archive`` write an OCI archive there instead, its image named ``ref`` (what
        ``ctr images import`` and the real node's ``import_images`` read).

        ``named_contexts``: ``{name: dir}`` replaces the Dockerfile's stage/image ``name``
        (what ``docker buildx build --build-context name=dir`` does)."""
        t0 = time.monotonic()
        meta = self.run_dir / f"meta-{abs(hash(ref))}.json"
        args = [
            str(self.bins["buildctl"]),
            "--addr",
            self.address,
            "build",
            "--progress",
            "plain",
            "--frontend",
            "dockerfile.v0",
            "--local",
            f"context={context}",
            "--local",
            f"dockerfile={dockerfile.parent}",
            "--opt",
            f"filename={dockerfile.name}",
            "--metadata-file",
            str(meta),
            "--output",
            f"type=oci,dest={archive},name={ref}"
            if archive is not None
            else f"type=image,name={ref},push={'true' if push else 'false'},oci-mediatypes=true",
        ]
        for k, v in (build_args or {}).items():
            args += ["--opt", f"build-arg:{k}={v}"]
        for name, d in (named_contexts or {}).items():
            args += ["--opt", f"context:{name}=local:{name}", "--local", f"{name}={d}"]
        log = log_file or self.run_dir / f"build-{ref.rsplit('/', 1)[-1].replace(':', '-')}.log"
        with open(log, "w") as f:
            r = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT)
        text = log.read_text(errors="replace")
        if r.returncode != 0:
            raise RuntimeError(
                f"buildctl build {ref} failed (exit {r.returncode}):\n{text[-4000:]}"
            )
        digest = str(json.loads(meta.read_text()).get("containerimage.digest", ""))
        return BuildResult(ref, digest, time.monotonic() - t0, text)

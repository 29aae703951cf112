"""ctr and crictl on a running node's containerd: images in (imported once), sandboxes read."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

from .images import archive_ref
from .layout import NodeLayout


class NodeRuntime(NodeLayout):
    """The node's container runtime as the tests and the CLI use it (needs ``bins``)."""

    def __init__(self, run_dir: Path, *, verbose: bool = True) -> None:
        super().__init__(run_dir)
        self.verbose = verbose
        self.bins: dict[str, Path] = {}

    def _say(self, msg: str) -> None:
        if self.verbose:
            print(f"[kubeforge-realnode] {msg}", file=sys.stderr, flush=True)

    def ctr(self, *args: str, input_file: Path | None = None, timeout: float = 600) -> str:
        cmd = [str(self.bins["ctr"]), "--address", str(self.containerd_sock), "-n", "k8s.io", *args]
        with open(input_file, "rb") if input_file else contextlib.nullcontext() as f:
            r = subprocess.run(cmd, stdin=f, capture_output=True, text=False, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {r.stderr.decode(errors='replace')}")
        return r.stdout.decode(errors="replace")

    def image_digests(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in self.ctr("images", "ls").splitlines()[1:]:
            f = line.split()
            if len(f) >= 3:
                out[f[0]] = f[2]
        return out

    def import_images(self, archives: list[Path]) -> list[str]:
        """Import OCI archives whose image (name + manifest digest) is not there yet."""
        have = self.image_digests()
        done = []
        for a in archives:
            name, digest = archive_ref(a)
            if have.get(name) == digest:
                continue
            t = time.monotonic()
            self.ctr("images", "import", "-", input_file=a)
            self._say(
                f"imported {name} ({a.stat().st_size / 1e6:.0f} MB) in {time.monotonic() - t:.1f}s"
            )
            done.append(name)
        return done

    def crictl(self, *args: str, check: bool = True) -> str:
        r = subprocess.run(
            [str(self.bins["crictl"]), "--config", str(self.crictl_config), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"crictl {' '.join(args)}: {r.stderr}")
        return r.stdout

    def pod_sandbox_pid(self, namespace: str, pod: str) -> int:
        ids = self.crictl(
            "pods", "-q", "--namespace", namespace, "--name", f"^{pod}$", "--state", "ready"
        ).split()
        if not ids:
            raise RuntimeError(f"no ready sandbox for {namespace}/{pod}")
        info = json.loads(self.crictl("inspectp", ids[0]))
        return int(info["info"]["pid"])

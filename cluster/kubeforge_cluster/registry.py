"""A real OCI registry on loopback (CNCF distribution v3), for pushing images and the chart.

    with LocalRegistry() as reg:          # 127.0.0.1:<free port>, storage kept across runs
        reg.host                          # "127.0.0.1:41234"
        reg.blob_uploads()                # completed blob uploads seen so far (access log)

Only loopback: ``http.addr`` is 127.0.0.1 (never 0.0.0.0), plain HTTP (nothing leaves the
machine, so there is no certificate to trust), tracing export off. The storage directory
(``~/.cache/kubeforge/registry`` by default) outlives the process, so a warm run finds every
layer it pushed before and uploads nothing again.

    python -m kubeforge_cluster.registry up [--port N]   # stays up; prints its address
    python -m kubeforge_cluster.registry down
    python -m kubeforge_cluster.registry gc              # drop untagged blobs (registry stopped)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from . import shipbins
from .procs import DaemonOwner, ManagedProcess, env_without_tracing

#: A completed blob upload: the final PUT of an upload session (monolithic or chunked).
_UPLOAD_DONE = re.compile(
    r'"PUT /v2/(?P<repo>[^ ]+)/blobs/uploads/[^ ]*digest=[^ ]* HTTP/[\d.]+" 201'
)


def default_storage() -> Path:
    env = os.environ.get("KUBEFORGE_REGISTRY_STORAGE")
    if env:
        return Path(env).expanduser()
    return shipbins.default_bin_dir().parent.parent / "registry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_yaml(storage: Path, port: int) -> str:
    """distribution's configuration (YAML; JSON is YAML): loopback, filesystem storage."""
    cfg = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {
            "addr": f"127.0.0.1:{port}",
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
    }
    return json.dumps(cfg, indent=1) + "\n"


class LocalRegistry(DaemonOwner):
    """Start (or :meth:`attach` to) a registry; stop it on exit. Logs in ``run_dir/registry.log``."""

    def __init__(
        self,
        run_dir: Path | None = None,
        *,
        port: int | None = None,
        storage: Path | None = None,
    ) -> None:
        super().__init__(run_dir, "kubeforge-registry-")
        self.port = port or free_port()
        self.storage = Path(storage or default_storage())

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "registry.log"

    def start(self, timeout: float = 30) -> LocalRegistry:
        binary = shipbins.require("registry")["registry"]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(parents=True, exist_ok=True)
        cfg = self.run_dir / "config.yml"
        cfg.write_text(config_yaml(self.storage, self.port))
        self._start_daemon(
            ManagedProcess(
                "registry",
                [str(binary), "serve", str(cfg)],
                log_path=self.log_path,
                pid_file=self.run_dir / "registry.pid",
                stop_grace=10,
            ),
            self.ping,
            timeout=timeout,
            poll_interval=0.2,
            log_tail_chars=2000,
            not_ready=f"registry not answering on {self.host} after {timeout}s",
        )
        return self

    def ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2) as r:
                return int(r.status) == 200
        except (OSError, urllib.error.URLError):
            return False

    # ----------------------------------------------------------------------------------------
    # what was pushed

    def blob_uploads(self, repo: str | None = None) -> int:
        """Completed blob uploads in the access log so far (of ``repo`` only, if given)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return sum(1 for m in _UPLOAD_DONE.finditer(text) if repo is None or m["repo"] == repo)

    def tags(self, repo: str) -> list[str]:
        try:
            with urllib.request.urlopen(f"http://{self.host}/v2/{repo}/tags/list", timeout=5) as r:
                return list(json.loads(r.read()).get("tags") or [])
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return []
            raise


def garbage_collect(storage: Path | None = None) -> int:
    """Delete blobs no tag reaches any more (rebuilds leave old layers behind). distribution
    needs the registry stopped meanwhile: run it when none is up on this storage."""
    binary = shipbins.require("registry")["registry"]
    store = Path(storage or default_storage())
    with tempfile.TemporaryDirectory(prefix="kubeforge-registry-gc-") as tmp:
        cfg = Path(tmp) / "config.yml"
        cfg.write_text(config_yaml(store, free_port()))
        r = subprocess.run(
            [str(binary), "garbage-collect", "--delete-untagged", str(cfg)],
            capture_output=True,
            text=True,
            env=env_without_tracing(),
        )
    deleted = sum(1 for ln in r.stdout.splitlines() if "blob eligible for deletion" in ln)
    print(f"registry gc on {store}: {deleted} blobs deleted (exit {r.returncode})")
    return r.returncode


def _state_file() -> Path:
    return Path("/tmp/kubeforge-registry-cli/state.json")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kubeforge_cluster.registry", description=__doc__)
    ap.add_argument("command", choices=["up", "down", "gc"])
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args(argv)
    st = _state_file()
    if a.command == "gc":
        return garbage_collect()
    if a.command == "up":
        reg = LocalRegistry(st.parent, port=a.port or None).start()
        assert reg.daemon is not None and reg.daemon.popen is not None
        st.write_text(json.dumps({"pid": reg.daemon.popen.pid, "host": reg.host}))
        reg.daemon = None  # keep it running after this process exits
        print(f"registry on {reg.host} (storage {reg.storage}; logs {reg.log_path})")
        print(f"export KUBEFORGE_REGISTRY={reg.host}")
        return 0
    try:
        info = json.loads(st.read_text())
    except (OSError, ValueError):
        print("no registry started by `up`")
        return 0
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(info["pid"]), signal.SIGTERM)
    st.unlink(missing_ok=True)
    print(f"registry {info['host']} stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def hosts_toml(host: str) -> str:
    """containerd's hosts.toml for a plain-HTTP registry on loopback (pull and resolve only)."""
    return (
        f'server = "http://{host}"\n\n'
        f'[host."http://{host}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
        "  skip_verify = true\n"
    )


def trust_on_node(hosts_dir: Path, host: str) -> Path:
    """Let a real node's containerd pull from ``host`` (``RealNode.registry_hosts_dir``)."""
    if not host.startswith(("127.", "localhost:")):
        raise ValueError(f"{host}: only loopback registries are configured here")
    d = hosts_dir / host
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts.toml").write_text(hosts_toml(host))
    return d / "hosts.toml"

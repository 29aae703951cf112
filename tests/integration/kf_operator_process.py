"""The operator as a real process against the test cluster (shared by the integration suites:
the `operator` fixture in tests/integration/conftest.py, and suites that start their own)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import ClassVar

from kubeforge_cluster.progress import local_progress_tls

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """`kubeforge-operator` in a subprocess against the test cluster."""

    running: ClassVar[list[OperatorProcess]] = []
    """Operators alive now (suites that need to be the only operator pause these)."""

    def __init__(
        self, kubeconfig: str, log_path: Path, progress_address: str = "127.0.0.1", **env: str
    ) -> None:
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.readiness_port = free_port()
        self.log_path = log_path
        # the progress endpoint on loopback with a local certificate; the URL training pods
        # get is the chart's Service (the pod player and the tests reach it here instead)
        self.progress_tls = local_progress_tls(log_path.parent / "progress-tls", progress_address)
        self.progress_endpoint = self.progress_tls.endpoint
        self.env = {
            **os.environ,
            "KUBECONFIG": kubeconfig,
            "KUBEFORGE_RESYNC_SECONDS": "10",
            "KUBEFORGE_CONCURRENCY": "8",
            "KUBEFORGE_LOG_FORMAT": "plain",
            "KUBEFORGE_PROGRESS_URL": "https://kubeforge-progress.kubeforge-system.svc:8443",
            **self.progress_tls.env(),
            # by env, not --readiness-port: older operators (benchmarks' "before") ignore it
            "KUBEFORGE_READINESS_PORT": str(self.readiness_port),
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *(
                    ["-m", "cProfile", "-o", os.environ["KUBEFORGE_PROFILE"]]
                    if os.environ.get("KUBEFORGE_PROFILE")
                    else []
                ),
                "-m",
                "kubeforge.main",
                "--metrics-port",
                str(self.metrics_port),
                "--liveness-port",
                str(self.liveness_port),
            ],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        OperatorProcess.running.append(self)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited: {self.logs()}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1
                ):
                    return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"operator not live after 60 s: {self.logs()}")

    def readiness(self) -> tuple[int, dict[str, object]]:
        """(HTTP status, JSON body) of /readyz."""
        import json
        import urllib.error

        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.readiness_port}/readyz", timeout=2
            ) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except OSError:
            return 0, {}  # not serving (the operator is starting kopf again)

    def kill(self) -> None:
        """SIGKILL: no cleanup at all (the Lease is not given up)."""
        if self in OperatorProcess.running:
            OperatorProcess.running.remove(self)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as r:
            return str(r.read().decode())

    def writes(self) -> float:
        """kubeforge_api_writes_total summed."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("kubeforge_api_writes_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def logs(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self in OperatorProcess.running:
            OperatorProcess.running.remove(self)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "_log"):
            self._log.close()

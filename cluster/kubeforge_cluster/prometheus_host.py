"""A real Prometheus (Debian's `prometheus`) on 127.0.0.1 scraping host processes.

Targets come from a file (`file_sd_configs`) that the caller rewrites as its processes come and go
(``set_targets``): with pods played by local `kubeforge-server` processes, the pod player's list
of ready servers is the service discovery (kubernetes_sd would find the kwok pods' fake IPs).
Each target carries the labels a ServiceMonitor would give it (`namespace`, `pod`), so the
queries the operator writes for KEDA work unchanged.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .cluster import free_port


class HostPrometheus:
    def __init__(self, workdir: Path, *, scrape_interval: str = "1s") -> None:
        self.dir = workdir
        self.scrape_interval = scrape_interval
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.targets_file = self.dir / "targets.json"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def unsupported_reason() -> str | None:
        if shutil.which("prometheus") is None:
            return "Debian's prometheus is not installed (apt-get install prometheus; .ci/run does)"
        return None

    def start(self, timeout: float = 60) -> HostPrometheus:
        exe = shutil.which("prometheus")
        if exe is None:
            raise FileNotFoundError(self.unsupported_reason())
        self.dir.mkdir(parents=True, exist_ok=True)
        self.set_targets([])
        cfg = {
            "global": {"scrape_interval": self.scrape_interval, "scrape_timeout": "1s",
                       "evaluation_interval": self.scrape_interval},
            "scrape_configs": [{
                "job_name": "kubeforge-servers",
                "metrics_path": "/metrics",
                "file_sd_configs": [{"files": [str(self.targets_file)],
                                     "refresh_interval": "2s"}],
            }],
        }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        self.port = free_port()
        log = open(self.dir / "prometheus.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [
                exe,
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited {self.proc.returncode}: "
                    + (self.dir / "prometheus.log").read_text(errors="replace")[-2000:]
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"prometheus not ready in {timeout}s")

    def set_targets(self, targets: list[tuple[str, dict[str, str]]]) -> None:
        """[(host:port, labels)] — written atomically (Prometheus watches the file)."""
        doc = [{"targets": [addr], "labels": labels} for addr, labels in targets]
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.targets_file)

    def query(self, promql: str) -> float | None:
        """The instant query's single value (None: no series)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as r:
            doc: Any = json.loads(r.read())
        result = doc["data"]["result"]
        if not result:
            return None
        return float(result[0]["value"][1])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

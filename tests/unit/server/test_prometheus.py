"""A real Prometheus (Debian's package) scrapes /metrics and the series appear; promtool lints them."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from .conftest import RunningServer, free_port

BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": [0.1] * 128}]}
).encode()


def _metrics_text(server: RunningServer) -> str:
    with urllib.request.urlopen(f"http://{server.url}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return r.read().decode()


def _drive(server: RunningServer) -> None:
    for _ in range(5):
        req = urllib.request.Request(
            f"http://{server.url}/v2/models/mlp/infer", data=BODY, method="POST"
        )
        urllib.request.urlopen(req, timeout=10).read()
    bad = urllib.request.Request(
        f"http://{server.url}/v2/models/mlp/infer", data=b"{", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(bad, timeout=10)


def test_metrics_endpoint_series(server: RunningServer) -> None:
    _drive(server)
    text = _metrics_text(server)
    for series in (
        # request series carry the served file's sha256 (stable and candidate of a rollout)
        'kubeforge_server_requests_total{code="200",model="mlp",protocol="http",sha256="',
        'kubeforge_server_request_errors_total{code="400",model="mlp",protocol="http",sha256="',
        'kubeforge_server_request_duration_seconds_bucket{le="0.001",model="mlp",protocol="http",'
        'sha256="',
        'kubeforge_server_queue_duration_seconds_count{model="mlp"}',
        'kubeforge_server_inference_duration_seconds_sum{model="mlp"}',
        'kubeforge_server_batch_size_bucket{le="2.0",model="mlp"}',
        'kubeforge_server_inflight_requests{model="mlp"} 0.0',
        'kubeforge_server_model_ready{model="mlp"} 1.0',
        "kubeforge_server_model_info{",
        "process_cpu_seconds_total",
    ):
        assert series in text, series
    promtool = shutil.which("promtool")
    if promtool:
        proc = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_real_prometheus_scrapes(server: RunningServer, tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("the prometheus binary is missing (apt-get install -y prometheus)")
    _drive(server)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: kubeforge-server\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{server.http_port}']}}]\n"
    )
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    try:
        want = {
            "kubeforge_server_requests_total": {"model": "mlp", "code": "200", "protocol": "http"},
            "kubeforge_server_request_errors_total": {"model": "mlp", "code": "400"},
            "kubeforge_server_request_duration_seconds_bucket": {"model": "mlp"},
            "kubeforge_server_queue_duration_seconds_bucket": {"model": "mlp"},
            "kubeforge_server_inference_duration_seconds_bucket": {"model": "mlp"},
            "kubeforge_server_batch_size_bucket": {"model": "mlp"},
            "kubeforge_server_inflight_requests": {"model": "mlp"},
            "up": {"job": "kubeforge-server"},
        }
        found: dict[str, list[dict]] = {}  # type: ignore[type-arg]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(found) < len(want):
            for name in want:
                if name in found:
                    continue
                q = urllib.parse.urlencode({"query": name})
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{port}/api/v1/query?{q}", timeout=5
                    ) as r:
                        result = json.loads(r.read())["data"]["result"]
                except OSError:
                    break
                if result:
                    found[name] = result
            time.sleep(0.5)
        assert set(found) == set(want), (
            sorted(found),
            (tmp_path / "prometheus.log").read_text()[-2000:],
        )
        for name, labels in want.items():
            assert any(
                all(s["metric"].get(k) == v for k, v in labels.items()) for s in found[name]
            ), (name, found[name])
        assert found["up"][0]["value"][1] == "1"
    finally:
        proc.terminate()
        proc.wait(20)

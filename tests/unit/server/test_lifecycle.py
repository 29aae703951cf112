"""Readiness and graceful shutdown: SIGTERM under load loses no accepted request."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from pathlib import Path

import pytest

from .conftest import start_server

BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.1] * 64}]}
).encode()


@pytest.mark.slow
def test_sigterm_under_load_loses_no_accepted_request(mlp_path: Path, tmp_path: Path) -> None:
    srv = start_server(mlp_path, tmp_path, args=["--drain-seconds", "10"])
    ok = [0] * 8
    bad: list[str] = []
    stop = threading.Event()

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=30)
        while not stop.is_set():
            try:
                conn.request("POST", "/v2/models/mlp/infer", body=BODY)
                resp = conn.getresponse()
                data = resp.read()
            except (ConnectionError, http.client.HTTPException, OSError):
                # Not accepted: refused after the listener closed, or the connection was closed
                # before this request reached the server. Reconnect and try again.
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=30)
                time.sleep(0.01)
                continue
            if resp.status != 200:
                bad.append(f"{resp.status} {data[:200]!r}")
            else:
                ok[i] += 1
            if resp.getheader("connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=30)
        conn.close()

    # A keep-alive connection opened before SIGTERM sees readiness turn false.
    probe = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=10)
    probe.request("GET", "/v2/health/ready")
    assert probe.getresponse().read() == b'{"ready":true}'
    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    srv.proc.send_signal(15)
    time.sleep(0.05)
    probe.request("GET", "/v2/health/ready")
    r = probe.getresponse()
    assert (r.status, r.read()) == (503, b'{"ready":false}')
    assert r.getheader("connection") == "close"
    code = srv.proc.wait(20)
    stop.set()
    for t in threads:
        t.join(30)
    assert code == 0, srv.log()
    assert not bad, bad[:5]
    m = re.search(r"accepted=(\d+) answered=(\d+)", srv.log())
    assert m, srv.log()
    accepted, answered = int(m.group(1)), int(m.group(2))
    assert accepted == answered == sum(ok), (accepted, answered, ok)
    assert sum(ok) > 50


def test_missing_model_exits_1_with_termination_message(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "missing.onnx", tmp_path, wait_ready=False)
    assert srv.proc.wait(60) == 1
    assert "model not found" in (tmp_path / "termination-log").read_text()

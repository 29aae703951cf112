"""A rollout's figures read from a server's /metrics text and from a Prometheus answer."""

from __future__ import annotations

import math

from kubeforge.modeldeployment.rollout_metrics import (
    counters_from_prometheus,
    counters_from_text,
    prometheus_query,
)
from kubeforge_server.metrics import Metrics


def exposition() -> str:
    m = Metrics()
    mm = m.for_model("digits")
    mm.sha256 = "ab" * 32
    for _ in range(7):
        mm.request_done("http", 200, 0.002)
    mm.request_done("grpc", 200, 0.02)
    mm.request_done("http", 500, 0.001)
    mm.request_done("http", 400, 0.001)  # the client's fault: not an error of the model
    counts = mm.shadow_counts()
    counts.update(agreed=5, disagreed=2, failed=1, dropped=3)
    m.for_model("other").request_done("http", 500, 1.0)  # another model: not counted
    return m.render().decode()


def test_counters_from_a_servers_metrics() -> None:
    c = counters_from_text(exposition(), "digits")
    assert c.requests == 10 and c.errors == 1
    assert (c.agreed, c.disagreed, c.failed, c.dropped) == (5, 2, 1, 3)
    assert c.latency[-1] == (math.inf, 10)  # both protocols' histograms summed
    assert dict(c.latency)[0.0025] == 9


def test_counters_from_prometheus_grouped_by_pod() -> None:
    result = [
        {"metric": {"__name__": "kubeforge_server_requests_total", "model": "digits",
                    "pod": "digits-a", "code": "200"}, "value": [0, "90"]},
        {"metric": {"__name__": "kubeforge_server_requests_total", "model": "digits",
                    "pod": "digits-candidate-b", "code": "503"}, "value": [0, "4"]},
        {"metric": {"__name__": "kubeforge_server_shadow_requests_total", "model": "digits",
                    "pod": "digits-a", "outcome": "agreed"}, "value": [0, "80"]},
        {"metric": {"__name__": "kubeforge_server_request_duration_seconds_bucket",
                    "model": "digits", "pod": "digits-a", "le": "+Inf"}, "value": [0, "90"]},
        {"metric": {"__name__": "kubeforge_server_requests_total", "model": "digits",
                    "pod": "someone-else", "code": "200"}, "value": [0, "5"]},
    ]
    got = counters_from_prometheus(
        result, "digits", {"digits-a": "stable", "digits-candidate-b": "candidate"})
    assert set(got) == {"digits-a", "digits-candidate-b"}
    track, stable = got["digits-a"]
    assert track == "stable" and stable.requests == 90 and stable.agreed == 80
    assert stable.latency == ((math.inf, 90.0),)
    assert got["digits-candidate-b"][1].errors == 4
    assert 'namespace="ml",model="digits"' in prometheus_query("ml", "digits")

"""Prometheus metrics with a hot path of plain integer updates.

Request handling only bumps Python ints and lists; the prometheus-client collector turns them into
families at scrape time, so a scrape costs the scraper, not every request.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
PREFIX = "kubeforge_server"


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        acc = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            acc += n
            out.append((repr(float(bound)), acc))
        out.append(("+Inf", acc + self.counts[-1]))
        return out


class ModelMetrics:
    """Per-model series. Transports call ``request_done``; the batcher calls ``batch_done``."""

    __slots__ = (
        "batch_size", "codes", "inference", "inflight", "latency", "model", "queue", "sha256",
        "shadow",
    )

    def __init__(self, model: str) -> None:
        self.model = model
        self.sha256 = ""
        """The served file's digest (a label on the request series: during a progressive
        rollout, stable and candidate servers answer under one model name)."""
        self.shadow: dict[str, int] | None = None
        """Outcome counts of the shadow mirror (kubeforge_server.shadow), when one runs."""
        self.codes: dict[tuple[str, int], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.queue = Histogram(LATENCY_BUCKETS)
        self.inference = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.inflight = 0

    def shadow_counts(self) -> dict[str, int]:
        """The shadow mirror's outcome counters (every outcome exported from the start, at 0)."""
        if self.shadow is None:
            self.shadow = dict.fromkeys(("agreed", "disagreed", "failed", "dropped"), 0)
        return self.shadow

    def request_done(self, protocol: str, code: int, seconds: float) -> None:
        key = (protocol, code)
        codes = self.codes
        codes[key] = codes.get(key, 0) + 1
        hist = self.latency.get(protocol)
        if hist is None:
            hist = self.latency[protocol] = Histogram(LATENCY_BUCKETS)
        hist.observe(seconds)


class Metrics:
    def __init__(self) -> None:
        self.models: dict[str, ModelMetrics] = {}
        self.model_info: dict[str, dict[str, str]] = {}
        self.model_ready: dict[str, bool] = {}
        # How late the server's periodic timer fires: time the event loop was busy elsewhere.
        self.loop_lag = Histogram(LATENCY_BUCKETS)
        self.open_connections = 0
        self.buffered_bytes = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def for_model(self, name: str) -> ModelMetrics:
        m = self.models.get(name)
        if m is None:
            m = self.models[name] = ModelMetrics(name)
        return m

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        ms = list(self.metrics.models.values())
        requests = CounterMetricFamily(
            f"{PREFIX}_requests",
            "Inference requests by model (name and file sha256), protocol and status code.",
            labels=["model", "sha256", "protocol", "code"],
        )
        errors = CounterMetricFamily(
            f"{PREFIX}_request_errors",
            "Failed inference requests (status >= 400) by model and code.",
            labels=["model", "sha256", "protocol", "code"],
        )
        latency = HistogramMetricFamily(
            f"{PREFIX}_request_duration_seconds",
            "Inference request latency, request complete to response written.",
            labels=["model", "sha256", "protocol"],
        )
        shadow = CounterMetricFamily(
            f"{PREFIX}_shadow_requests",
            "Answered requests offered to the shadow mirror, by outcome: agreed / disagreed "
            "(the candidate's outputs compared with this server's), failed (the candidate "
            "answered an error, timed out or was unreachable), dropped (the mirror queue was "
            "full). sha256 is this (the stable) server's model.",
            labels=["model", "sha256", "outcome"],
        )
        queue = HistogramMetricFamily(
            f"{PREFIX}_queue_duration_seconds",
            "Time requests wait for the dynamic batcher.",
            labels=["model"],
        )
        inference = HistogramMetricFamily(
            f"{PREFIX}_inference_duration_seconds",
            "ONNX Runtime run time per batch.",
            labels=["model"],
        )
        batch = HistogramMetricFamily(
            f"{PREFIX}_batch_size", "Rows per ONNX Runtime run.", labels=["model"]
        )
        inflight = GaugeMetricFamily(
            f"{PREFIX}_inflight_requests",
            "Inference requests accepted and not yet answered.",
            labels=["model"],
        )
        for m in ms:
            for (protocol, code), n in sorted(m.codes.items()):
                requests.add_metric([m.model, m.sha256, protocol, str(code)], n)
                if code >= 400:
                    errors.add_metric([m.model, m.sha256, protocol, str(code)], n)
            for protocol, h in sorted(m.latency.items()):
                latency.add_metric([m.model, m.sha256, protocol], h.buckets(), h.sum)
            for outcome, n in (m.shadow or {}).items():
                shadow.add_metric([m.model, m.sha256, outcome], n)
            queue.add_metric([m.model], m.queue.buckets(), m.queue.sum)
            inference.add_metric([m.model], m.inference.buckets(), m.inference.sum)
            batch.add_metric([m.model], m.batch_size.buckets(), m.batch_size.sum)
            inflight.add_metric([m.model], m.inflight)
        yield from (requests, errors, latency, shadow, queue, inference, batch, inflight)
        lag = HistogramMetricFamily(
            f"{PREFIX}_event_loop_lag_seconds",
            "How late a periodic timer on the event loop fired (time the loop was blocked).",
        )
        lag.add_metric([], self.metrics.loop_lag.buckets(), self.metrics.loop_lag.sum)
        yield lag
        yield GaugeMetricFamily(
            f"{PREFIX}_http_connections", "Open HTTP connections.", self.metrics.open_connections
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_buffered_request_bytes",
            "Request body bytes held in memory (the --max-buffered-bytes budget in use).",
            self.metrics.buffered_bytes,
        )
        ready = GaugeMetricFamily(
            f"{PREFIX}_model_ready",
            "1 when the model is loaded, warmed and not draining.",
            labels=["model"],
        )
        for name, ok in sorted(self.metrics.model_ready.items()):
            ready.add_metric([name], 1.0 if ok else 0.0)
        yield ready
        info_keys = sorted({k for v in self.metrics.model_info.values() for k in v})
        info = GaugeMetricFamily(
            f"{PREFIX}_model_info",
            "The served model: URI, sha256, execution provider.",
            labels=["model", *info_keys],
        )
        for name, labels in sorted(self.metrics.model_info.items()):
            info.add_metric([name, *(labels.get(k, "") for k in info_keys)], 1.0)
        yield info

"""The operator's own Prometheus metrics."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence

from prometheus_client import REGISTRY, Counter, Gauge, Metric, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


class _Child:
    """One labelled series: a plain number (every update comes from the event loop's thread;
    the scrape thread only reads)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class LoopCounter(Collector):
    """A Prometheus counter whose series are plain numbers read at scrape time: the hot path's
    counters (per write, per watch event, per reconcile) cost an attribute add, not
    prometheus_client's lock (a few percent of the operator's CPU)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self._children: dict[tuple[str, ...], _Child] = {}
        REGISTRY.register(self)

    def labels(self, *values: str) -> _Child:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = _Child()
        return child

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(list(values), child.value)
        yield family


class LoopHistogram(Collector):
    """A Prometheus histogram kept like `LoopCounter`."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.bounds = tuple(buckets)
        self._children: dict[tuple[str, ...], _HistogramChild] = {}
        REGISTRY.register(self)

    def labels(self, *values: str) -> _HistogramChild:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = _HistogramChild(self.bounds)
        return child

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            counts = list(child.counts)
            cumulative, buckets = 0, []
            for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append((_le(bound), cumulative))
            family.add_metric(list(values), buckets, child.sum)
        yield family


RECONCILES = LoopCounter(
    "kubeforge_reconciles",
    "Reconciles run, by kind and result (ok, error).",
    ["kind", "result"],
)
RECONCILE_SECONDS = LoopHistogram(
    "kubeforge_reconcile_duration_seconds",
    "Time spent in one reconcile, by kind.",
    ["kind"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
ERRORS = LoopCounter(
    "kubeforge_reconcile_errors",
    "Reconciles that raised, by kind and error class.",
    ["kind", "error"],
)
OBJECTS = Gauge(
    "kubeforge_objects",
    "Objects the operator knows, by kind and phase.",
    ["kind", "phase"],
)
# counted in the API client's worker threads: prometheus_client's thread-safe counters
API_WRITES = Counter(
    "kubeforge_api_writes",
    "Writes the operator sent to the API server, by verb and resource.",
    ["verb", "resource"],
)
WATCH_LIST_FAILURES = Counter(
    "kubeforge_watch_list_failures",
    "Failed attempts to list a watched resource (403: missing RBAC, 404: API gone), by resource.",
    ["resource"],
)
API_RETRIES = Counter(
    "kubeforge_api_retries",
    "API requests sent again, by cause (throttled: 429, unauthorized: 401, server: 5xx, "
    "connection: broken connection on an idempotent request).",
    ["cause"],
)


def serve(port: int, address: str = "127.0.0.1") -> None:
    """Expose /metrics on address:port (in a daemon thread); port 0 disables it."""
    if port:
        start_http_server(port, addr=address)


class PhaseTracker:
    """Keeps `kubeforge_objects{kind,phase}` equal to the phases last seen, object by object."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._phase: dict[tuple[str, str], str] = {}

    def set(self, key: tuple[str, str], phase: str) -> None:
        old = self._phase.get(key)
        if old == phase:
            return
        if old is not None:
            OBJECTS.labels(self.kind, old).dec()
        OBJECTS.labels(self.kind, phase).inc()
        self._phase[key] = phase

    def forget(self, key: tuple[str, str]) -> None:
        old = self._phase.pop(key, None)
        if old is not None:
            OBJECTS.labels(self.kind, old).dec()

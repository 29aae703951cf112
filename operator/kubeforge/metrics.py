"""The operator's own Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter(
    "kubeforge_reconciles_total",
    "Reconciles run, by kind and result (ok, error).",
    ["kind", "result"],
)
RECONCILE_SECONDS = Histogram(
    "kubeforge_reconcile_duration_seconds",
    "Time spent in one reconcile, by kind.",
    ["kind"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
ERRORS = Counter(
    "kubeforge_reconcile_errors_total",
    "Reconciles that raised, by kind and error class.",
    ["kind", "error"],
)
OBJECTS = Gauge(
    "kubeforge_objects",
    "Objects the operator knows, by kind and phase.",
    ["kind", "phase"],
)
API_WRITES = Counter(
    "kubeforge_api_writes_total",
    "Writes the operator sent to the API server, by verb and resource.",
    ["verb", "resource"],
)

WATCH_EVENTS = Counter(
    "kubeforge_watch_events_total",
    "Watch events received, by resource.",
    ["resource"],
)
WATCH_BYTES = Counter(
    "kubeforge_watch_bytes_total",
    "Bytes of watch streams received, by resource (the operator's main parsing cost).",
    ["resource"],
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

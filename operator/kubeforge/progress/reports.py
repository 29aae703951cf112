"""The latest progress report of each TrainingJob, between the endpoint and the reconcile.

The endpoint only records here and wakes the TrainingJob's reconcile; the reconcile writes the
status (one merge patch, and none when nothing changed). Reports arriving faster than the
reconcile runs are coalesced: only the newest is kept. Rank 0 (completion index 0) speaks for
the job; other ranks' reports are accepted and dropped. After an operator restart nothing is
lost that matters: the status keeps the last report written, and the trainer sends a new one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

JSON = dict[str, Any]
Key = tuple[str, str]


def finite_numbers(values: Any) -> dict[str, float]:
    """The entries of a metrics map that are numbers (not bools, not NaN), as floats."""
    if not isinstance(values, dict):
        return {}
    return {
        str(k): float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and v == v
    }


def status_progress(report: JSON) -> JSON:
    """A report `{"seq", "step", "epoch", "metrics", "time"}` → `status.progress`
    (`{"epoch", "step", "metrics"}`; integers and finite numbers only)."""
    out: JSON = {}
    for name in ("epoch", "step"):
        value = report.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            out[name] = value
    out["metrics"] = finite_numbers(report.get("metrics"))
    return out


def _order(report: JSON) -> tuple[float, int]:
    time, seq = report.get("time"), report.get("seq")
    return (
        float(time) if isinstance(time, int | float) and not isinstance(time, bool) else 0.0,
        int(seq) if isinstance(seq, int) and not isinstance(seq, bool) else 0,
    )


def _unknown(namespace: str, name: str) -> tuple[JSON | None, JSON | None]:
    return None, None


class ProgressReports:
    """Latest report per TrainingJob (event loop only). `on_report(key)` is called after each
    accepted report (the TrainingJob controller's enqueue)."""

    def __init__(self) -> None:
        self._latest: dict[Key, tuple[tuple[float, int], JSON]] = {}
        self.on_report: Callable[[Key], None] | None = None
        self.lookup: Callable[[str, str], tuple[JSON | None, JSON | None]] = _unknown
        """(namespace, name) → (TrainingJob, its Job) as the operator sees them (set by the
        TrainingJob controller)."""

    def record(self, key: Key, report: JSON, rank: int | None) -> bool:
        """Keep `report` if it is rank 0's and newer than the one held; True when kept. A new
        dict each time, so a reconcile can tell a new report by identity."""
        if rank not in (0, None):
            return False
        held = self._latest.get(key)
        order = _order(report)
        if held is not None and order < held[0]:
            return False  # a retry of an older report arrived late
        self._latest[key] = (order, status_progress(report))
        if self.on_report is not None:
            self.on_report(key)
        return True

    def latest(self, key: Key) -> JSON | None:
        """The newest report of `key` as `status.progress` (the same object until a newer one
        arrives), or None."""
        held = self._latest.get(key)
        return held[1] if held is not None else None

    def forget(self, key: Key) -> None:
        self._latest.pop(key, None)

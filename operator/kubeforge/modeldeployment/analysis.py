"""A progressive rollout's analysis (pure): cumulative counters scraped from the servers → the
increase over the current step (counter-reset aware) → figures → a verdict.

Nothing here does I/O or reads a clock: the reconcile passes the scrapes and the step's elapsed
time, so every verdict can be replayed from crafted series in a unit test.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from kubeforge.api.rollout import Analysis

INF = math.inf


@dataclass(frozen=True)
class Counters:
    """Cumulative counters of one server process (or a sum over several), as /metrics shows.

    `latency`: the request-latency histogram as (upper bound in seconds, cumulative count),
    ascending, the last bound +Inf. The shadow outcomes are the stable servers' mirror counts.
    """

    requests: float = 0.0
    errors: float = 0.0
    """Answers with a 5xx status (a 4xx is the client's fault, not the model's)."""
    latency: tuple[tuple[float, float], ...] = ()
    agreed: float = 0.0
    disagreed: float = 0.0
    failed: float = 0.0
    dropped: float = 0.0

    def _scalars(self) -> tuple[float, ...]:
        return (self.requests, self.errors, self.agreed, self.disagreed, self.failed,
                self.dropped)

    def __add__(self, other: Counters) -> Counters:
        return Counters(
            self.requests + other.requests,
            self.errors + other.errors,
            _add_buckets(self.latency, other.latency),
            self.agreed + other.agreed,
            self.disagreed + other.disagreed,
            self.failed + other.failed,
            self.dropped + other.dropped,
        )


def _add_buckets(
    a: tuple[tuple[float, float], ...], b: tuple[tuple[float, float], ...]
) -> tuple[tuple[float, float], ...]:
    if not a:
        return b
    if not b:
        return a
    bounds = sorted({le for le, _ in a} | {le for le, _ in b})
    return tuple((le, _cumulative_at(a, le) + _cumulative_at(b, le)) for le in bounds)


def _cumulative_at(buckets: tuple[tuple[float, float], ...], bound: float) -> float:
    """The cumulative count at `bound` (the largest bucket at or below it)."""
    count = 0.0
    for le, n in buckets:
        if le > bound:
            break
        count = n
    return count


def counter_reset(prev: Counters, cur: Counters) -> bool:
    """Whether the process restarted between two scrapes: any counter (or bucket) went down.
    All of a process's counters restart together, so one decrease resets them all."""
    if any(c < p for p, c in zip(prev._scalars(), cur._scalars(), strict=True)):
        return True
    prev_buckets = dict(prev.latency)
    return any(n < prev_buckets.get(le, 0.0) for le, n in cur.latency)


def increase(prev: Counters | None, cur: Counters) -> Counters:
    """What happened between two scrapes of one process. After a restart (a counter reset) the
    whole current value is new, as Prometheus' increase() treats it. Without a previous scrape
    the current one is a baseline: nothing is counted."""
    if prev is None:
        return Counters()
    if counter_reset(prev, cur):
        return cur
    prev_buckets = dict(prev.latency)
    return Counters(
        cur.requests - prev.requests,
        cur.errors - prev.errors,
        tuple((le, n - prev_buckets.get(le, 0.0)) for le, n in cur.latency),
        cur.agreed - prev.agreed,
        cur.disagreed - prev.disagreed,
        cur.failed - prev.failed,
        cur.dropped - prev.dropped,
    )


def total(counters: Iterable[Counters]) -> Counters:
    out = Counters()
    for c in counters:
        out = out + c
    return out


def quantile(q: float, buckets: tuple[tuple[float, float], ...]) -> float | None:
    """Prometheus' histogram_quantile on cumulative buckets (linear within a bucket). None
    without observations; the highest finite bound when the quantile falls in +Inf."""
    if not buckets:
        return None
    count = buckets[-1][1]
    if count <= 0:
        return None
    rank = q * count
    lower, below = 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if le == INF:
                return lower
            if n == below:
                return le
            return lower + (le - lower) * (rank - below) / (n - below)
        lower, below = le, n
    return lower


@dataclass
class StepWindow:
    """The increase over the current step, per server process, summed per track. The reconcile
    keeps one per rollout step in memory (an operator restart starts a new window: the pods
    seen then are baselines, and the step's pause still counts from status.rollout)."""

    last: dict[str, Counters] = field(default_factory=dict)
    """pod name → its last scrape."""
    sums: dict[str, Counters] = field(default_factory=dict)
    """track (stable / candidate) → the increase so far."""
    baseline: bool = True
    """Pods first seen on the window's first scrape are baselines; pods first seen later started
    during the step (a candidate's new replica): everything they count is new."""

    def observe(self, scrapes: Mapping[str, tuple[str, Counters]]) -> None:
        """One round of scrapes: pod name → (track, cumulative counters)."""
        for pod, (track, cur) in scrapes.items():
            prev = self.last.get(pod)
            if prev is None and not self.baseline:
                prev = Counters()
            self.sums[track] = self.sums.get(track, Counters()) + increase(prev, cur)
            self.last[pod] = cur
        self.baseline = False

    def track(self, name: str) -> Counters:
        return self.sums.get(name, Counters())


class Verdict(StrEnum):
    WAIT = "Wait"
    """Too few requests measured for a verdict."""
    CONTINUE = "Continue"
    """Healthy so far; the step's pause has not passed."""
    PROMOTE = "Promote"
    """The step passed: go to the next step (or promote the candidate after the last)."""
    ROLLBACK = "Rollback"
    """A threshold was breached."""


@dataclass(frozen=True)
class Figures:
    requests: int
    errors: int
    error_rate: float | None
    mirrored: int
    """Mirrored requests that ended: compared or failed."""
    compared: int
    agreed: int
    agreement: float | None
    dropped: int
    candidate_p99: float | None
    stable_p99: float | None
    latency_ratio: float | None


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    """Rollback: a CamelCase reason (HighErrorRate, HighLatency, LowAgreement)."""
    message: str
    figures: Figures


def figures(stable: Counters, candidate: Counters) -> Figures:
    compared = stable.agreed + stable.disagreed
    mirrored = compared + stable.failed
    requests = max(candidate.requests, mirrored)
    rates = []
    if candidate.requests > 0:
        rates.append(candidate.errors / candidate.requests)
    if mirrored > 0:
        rates.append(stable.failed / mirrored)
    cand_p99 = quantile(0.99, candidate.latency)
    stable_p99 = quantile(0.99, stable.latency)
    ratio = None
    if cand_p99 is not None and stable_p99:
        ratio = cand_p99 / stable_p99
    return Figures(
        requests=int(requests),
        errors=int(max(candidate.errors, stable.failed)),
        error_rate=max(rates) if rates else None,
        mirrored=int(mirrored),
        compared=int(compared),
        agreed=int(stable.agreed),
        agreement=stable.agreed / compared if compared > 0 else None,
        dropped=int(stable.dropped),
        candidate_p99=cand_p99,
        stable_p99=stable_p99,
        latency_ratio=ratio,
    )


def decide(
    stable: Counters,
    candidate: Counters,
    analysis: Analysis,
    *,
    elapsed_seconds: float,
    pause_seconds: float,
) -> Decision:
    """The verdict on one step from its figures so far (see `Verdict`).

    - `stable`: the increase over the step of the stable servers (latency, mirror outcomes);
    - `candidate`: the increase over the step of the candidate servers (requests, 5xx,
      latency; mirrored requests included: the candidate cannot tell them apart).
    No verdict on fewer than `minRequests` requests: not even a rollback (a few early errors
    prove nothing); then a breach of any threshold rolls back; else the step passes once its
    pause has passed.
    """
    f = figures(stable, candidate)
    if f.requests < analysis.min_requests:
        return Decision(
            Verdict.WAIT, "", f"{f.requests}/{analysis.min_requests} requests measured", f
        )
    if f.error_rate is not None and f.error_rate > analysis.max_error_rate:
        return Decision(
            Verdict.ROLLBACK, "HighErrorRate",
            f"error rate {f.error_rate:.2%} over {f.requests} requests exceeds maxErrorRate "
            f"{analysis.max_error_rate:.2%}", f,
        )
    if f.agreement is not None and f.agreement < analysis.min_agreement:
        return Decision(
            Verdict.ROLLBACK, "LowAgreement",
            f"outputs agreed on {f.agreement:.2%} of {f.compared} compared requests,"
            f" below minAgreement {analysis.min_agreement:.2%}", f,
        )
    if f.latency_ratio is not None and f.latency_ratio > analysis.max_latency_ratio:
        return Decision(
            Verdict.ROLLBACK, "HighLatency",
            f"candidate p99 {_ms(f.candidate_p99)} is {f.latency_ratio:.2f}x the stable p99 "
            f"{_ms(f.stable_p99)}, above maxLatencyRatio {analysis.max_latency_ratio:g}", f,
        )
    if elapsed_seconds >= pause_seconds:
        return Decision(Verdict.PROMOTE, "", "step passed", f)
    return Decision(
        Verdict.CONTINUE, "",
        f"healthy; {max(0, int(pause_seconds - elapsed_seconds))}s of the step's pause left", f,
    )


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}ms"


__all__ = [
    "Counters",
    "Decision",
    "Figures",
    "StepWindow",
    "Verdict",
    "counter_reset",
    "decide",
    "figures",
    "increase",
    "quantile",
    "total",
]

"""The rollout's decision function on crafted series: figures in, verdict out."""

from __future__ import annotations

import math

import pytest
from kubeforge.api.rollout import Analysis
from kubeforge.modeldeployment.analysis import (
    Counters,
    StepWindow,
    Verdict,
    counter_reset,
    decide,
    increase,
    quantile,
)

INF = math.inf
ANALYSIS = Analysis(min_requests=100, max_error_rate=0.01, max_latency_ratio=1.5,
                    min_agreement=0.95)


def lat(*counts: float, bounds: tuple[float, ...] = (0.001, 0.01, 0.1, INF)) -> tuple:
    """Cumulative buckets from per-bucket counts."""
    acc, out = 0.0, []
    for le, n in zip(bounds, counts, strict=True):
        acc += n
        out.append((le, acc))
    return tuple(out)


FAST = lat(0, 200, 0, 0)  # every request between 1 and 10 ms
SLOW = lat(0, 0, 200, 0)  # every request between 10 and 100 ms


def test_too_few_requests_waits_even_with_errors() -> None:
    cand = Counters(requests=50, errors=50, latency=lat(0, 50, 0, 0))
    d = decide(Counters(latency=FAST), cand, ANALYSIS, elapsed_seconds=999, pause_seconds=10)
    assert d.verdict is Verdict.WAIT
    assert "50/100 requests" in d.message


def test_healthy_step_continues_then_promotes_after_its_pause() -> None:
    stable = Counters(requests=200, latency=FAST, agreed=200)
    cand = Counters(requests=200, latency=FAST)
    early = decide(stable, cand, ANALYSIS, elapsed_seconds=5, pause_seconds=60)
    assert early.verdict is Verdict.CONTINUE
    done = decide(stable, cand, ANALYSIS, elapsed_seconds=60, pause_seconds=60)
    assert done.verdict is Verdict.PROMOTE
    assert done.figures.agreement == 1.0 and done.figures.error_rate == 0.0


def test_low_agreement_rolls_back_with_the_figures() -> None:
    stable = Counters(requests=300, latency=FAST, agreed=30, disagreed=170)
    d = decide(stable, Counters(requests=200, latency=FAST), ANALYSIS,
               elapsed_seconds=1, pause_seconds=60)
    assert d.verdict is Verdict.ROLLBACK and d.reason == "LowAgreement"
    assert d.figures.agreement == pytest.approx(0.15)
    assert "15.00% of 200 compared" in d.message


def test_errors_roll_back_and_so_do_failed_mirrors() -> None:
    stable = Counters(requests=300, latency=FAST)
    d = decide(stable, Counters(requests=200, errors=10, latency=FAST), ANALYSIS,
               elapsed_seconds=1, pause_seconds=60)
    assert d.verdict is Verdict.ROLLBACK and d.reason == "HighErrorRate"
    assert d.figures.error_rate == pytest.approx(0.05)
    # a candidate that cannot be reached answers nothing itself: the mirror's failures count
    unreachable = Counters(requests=300, latency=FAST, failed=150)
    d = decide(unreachable, Counters(), ANALYSIS, elapsed_seconds=1, pause_seconds=60)
    assert d.verdict is Verdict.ROLLBACK and d.reason == "HighErrorRate"


def test_slow_candidate_rolls_back_on_latency() -> None:
    d = decide(Counters(requests=200, latency=FAST), Counters(requests=200, latency=SLOW),
               ANALYSIS, elapsed_seconds=1, pause_seconds=60)
    assert d.verdict is Verdict.ROLLBACK and d.reason == "HighLatency"
    assert d.figures.latency_ratio is not None and d.figures.latency_ratio > 5


def test_quantile_matches_prometheus_interpolation() -> None:
    buckets = ((0.1, 50.0), (0.2, 100.0), (INF, 100.0))
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.75, buckets) == pytest.approx(0.15)
    assert quantile(0.99, ((0.1, 0.0), (INF, 10.0))) == pytest.approx(0.1)  # in +Inf
    assert quantile(0.99, ((0.1, 0.0), (INF, 0.0))) is None


def test_increase_over_a_counter_reset_counts_the_new_process_whole() -> None:
    before = Counters(requests=1000, errors=2, latency=lat(0, 1000, 0, 0))
    after = Counters(requests=1100, errors=2, latency=lat(0, 1100, 0, 0))
    assert increase(before, after).requests == 100
    restarted = Counters(requests=40, errors=1, latency=lat(0, 40, 0, 0))
    assert counter_reset(after, restarted)
    inc = increase(after, restarted)
    assert inc.requests == 40 and inc.errors == 1 and inc.latency[-1][1] == 40
    assert increase(None, after) == Counters()  # a first scrape is a baseline


def test_step_window_baselines_old_pods_and_counts_new_ones_whole() -> None:
    w = StepWindow()
    w.observe({"stable-a": ("stable", Counters(requests=5000, agreed=900)),
               "cand-a": ("candidate", Counters(requests=900))})
    assert w.track("stable").requests == 0 and w.track("candidate").requests == 0
    w.observe({"stable-a": ("stable", Counters(requests=5100, agreed=1000)),
               "cand-a": ("candidate", Counters(requests=1000)),
               # a replica that started during the step: all it counted is new
               "cand-b": ("candidate", Counters(requests=30))})
    assert w.track("stable").requests == 100 and w.track("stable").agreed == 100
    assert w.track("candidate").requests == 130
    # cand-a restarted (its counters went down): its new count is the increase
    w.observe({"cand-a": ("candidate", Counters(requests=7))})
    assert w.track("candidate").requests == 137


def test_agreement_is_judged_only_when_requests_were_compared() -> None:
    # a weight step without mirroring: no agreement figure, no agreement verdict
    d = decide(Counters(requests=500, latency=FAST), Counters(requests=200, latency=FAST),
               ANALYSIS, elapsed_seconds=99, pause_seconds=10)
    assert d.figures.agreement is None and d.verdict is Verdict.PROMOTE

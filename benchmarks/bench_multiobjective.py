"""Multi-objective search: hypervolume after N trials on ZDT1, NSGA-II and TPE against random.

Every suggestion goes through the operator's own code path: a study rebuilt from the trial
records (`kubeforge.tuningstudy.search.SearchState`), exactly as a TuningStudy with
`objectives: [{metric: f1, direction: minimize}, {metric: f2, direction: minimize}]` runs it.
The same seeds for every sampler. Hypervolume is measured against the reference point
(1.1, 11), which every ZDT1 point lies inside (f1 <= 1, f2 <= 10). Issue 22 aims for a ratio of
at least 1.2x over random at 50 trials.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

REF = (1.1, 11.0)


def zdt1(x: list[float]) -> tuple[float, float]:
    f1 = x[0]
    g = 1 + 9 * sum(x[1:]) / (len(x) - 1)
    return f1, g * (1 - math.sqrt(f1 / g))


def hypervolume(points: list[tuple[float, float]]) -> float:
    """Area dominated by `points` (both minimised) inside the reference box."""
    inside = sorted(p for p in points if p[0] < REF[0] and p[1] < REF[1])
    area, best_f2 = 0.0, REF[1]
    for f1, f2 in inside:  # by f1 ascending: each new lower f2 adds a strip to the right
        if f2 < best_f2:
            area += (REF[0] - f1) * (best_f2 - f2)
            best_f2 = f2
    return area


def front_hypervolume() -> float:
    """The hypervolume of ZDT1's true front (f2 = 1 - sqrt(f1), 0 <= f1 <= 1): the most any
    sampler can reach, so the ceiling of the ratio to random at this reference point.
    Area = integral over f1 in [0, 1] of (REF[1] - 1 + sqrt(f1)) + (REF[0] - 1) * REF[1]."""
    return (REF[1] - 1) + 2 / 3 + (REF[0] - 1) * REF[1]


def run(algo: str, seed: int, trials: int, dims: int, settings: dict[str, Any]) -> float:
    from kubeforge.api.tuningstudy import TuningStudySpec
    from kubeforge.tuningstudy.search import SearchState, TrialRecord

    spec = TuningStudySpec.model_validate(
        {
            "objectives": [{"metric": "f1"}, {"metric": "f2"}],
            "searchSpace": {f"x{i}": {"type": "float", "low": 0, "high": 1} for i in range(dims)},
            "algorithm": {"name": algo, "seed": seed, "settings": settings},
            "maxTrials": trials,
            "trialTemplate": {"spec": {"command": ["zdt1"]}},
        }
    )
    records: list[TrialRecord] = []
    points = []
    for _ in range(trials):
        s = SearchState(spec, records, "bench/zdt1").suggest()
        f1, f2 = zdt1([s.params[f"x{i}"] for i in range(dims)])
        points.append((f1, f2))
        records.append(
            TrialRecord(
                number=s.number,
                params=s.params,
                state="complete",
                finals={"f1": f1, "f2": f2},
                system_attrs=s.system_attrs,
                study_system_attrs=s.study_system_attrs,
            )
        )
    return hypervolume(points)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--dims", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--population", type=int, default=10, help="NSGA-II population_size")
    args = ap.parse_args()
    samplers: list[tuple[str, str, dict[str, Any]]] = [
        ("random", "random", {}),
        (f"nsga2 (population {args.population})", "nsga2", {"population_size": args.population}),
        ("tpe", "tpe", {}),
        ("tpe multivariate", "tpe", {"multivariate": True}),
        # fewer random start-up trials, and the prior's endpoints considered: the best settings
        # found in a sweep (n_startup_trials 3/5/10, multivariate, n_ei_candidates 24/100,
        # consider_endpoints; NSGA-II population 4/6/10, mutation_prob)
        ("tpe 5 start-up endpoints", "tpe", {"n_startup_trials": 5, "consider_endpoints": True}),
    ]
    print(
        f"ZDT1, {args.dims} variables, {args.trials} trials, seeds 0..{args.seeds - 1}, "
        f"hypervolume vs reference {REF} (higher is better)"
    )
    head = (
        f"{'sampler':<26} {'mean HV':>8} {'min':>7} {'max':>7} {'vs random':>9} "
        f"{'gap closed':>10} {'s/study':>8}"
    )
    print(head)
    print("-" * len(head))
    best = front_hypervolume()
    base = None
    for label, algo, settings in samplers:
        t0 = time.perf_counter()
        hvs = [run(algo, seed, args.trials, args.dims, settings) for seed in range(args.seeds)]
        took = (time.perf_counter() - t0) / args.seeds
        mean = statistics.mean(hvs)
        base = mean if base is None else base
        gap = (mean - base) / (best - base)
        print(
            f"{label:<26} {mean:>8.3f} {min(hvs):>7.3f} {max(hvs):>7.3f} "
            f"{mean / base:>8.2f}x {gap:>9.0%} {took:>8.2f}"
        )
    assert base is not None
    print(
        f"{'true front (the ceiling)':<26} {best:>8.3f} {'':>7} {'':>7} {best / base:>8.2f}x "
        f"{1:>9.0%}"
    )
    print("gap closed: (HV - random's) / (true front's - random's)")


if __name__ == "__main__":
    main()

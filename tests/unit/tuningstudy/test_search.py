"""The search rebuilt from trial records behaves exactly like an uninterrupted Optuna study."""

from __future__ import annotations

import json
import math
from typing import Any

import optuna
import pytest
from kubeforge.api.tuningstudy import Objective, TuningStudySpec
from kubeforge.tuningstudy import search as S
from kubeforge.tuningstudy.search import SearchState, TrialRecord


def make_spec(algo: str = "tpe", pruner: str = "none", **extra: Any) -> TuningStudySpec:
    finite = algo == "grid"
    raw: dict[str, Any] = {
        "objective": {"metric": "loss", "direction": "minimize"},
        "searchSpace": {
            "x": {"type": "float", "low": -5, "high": 5, **({"step": 2.5} if finite else {})},
            "lr": (
                {"type": "int", "low": 1, "high": 3}
                if finite
                else {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}
            ),
            "opt": {"type": "categorical", "choices": ["adam", "sgd"]},
        },
        "algorithm": {"name": algo, "seed": 3},
        "earlyStopping": {"name": pruner, "startStep": 0},
        "trialTemplate": {"spec": {"command": ["train"]}},
    }
    for k, v in extra.items():
        raw[k] = {**raw[k], **v} if isinstance(v, dict) and k in raw else v
    return TuningStudySpec.model_validate(raw)


def f(p: dict[str, Any]) -> float:
    return (
        (p["x"] - 1) ** 2 + (0 if p["opt"] == "adam" else 1) + abs(math.log10(float(p["lr"])) + 2)
    )


def leave_running(n: int) -> bool:
    return n >= 2 and n % 3 == 2


def uninterrupted(spec: TuningStudySpec, n_trials: int) -> list[dict[str, Any]]:
    """One long-lived Optuna study (per-trial sampler seeds, as the operator uses)."""
    study = optuna.create_study(study_name="k", direction="minimize")
    out = []
    for n in range(n_trials):
        study.sampler = S.build_sampler(spec, n, "k")
        t = study.ask(fixed_distributions=S.distributions(spec))
        out.append(dict(t.params))
        if leave_running(n):
            continue
        if n % 5 == 4:
            study.tell(t, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(t, f(t.params))
    return out


def rebuilt(spec: TuningStudySpec, n_trials: int) -> list[dict[str, Any]]:
    """Each suggestion from a study rebuilt from the records only (a restart every time)."""
    records: list[TrialRecord] = []
    out = []
    for n in range(n_trials):
        s = SearchState(spec, records, "k").suggest()
        assert s.number == n
        out.append(s.params)
        rec = TrialRecord(
            number=n,
            params=s.params,
            system_attrs=s.system_attrs,
            study_system_attrs=s.study_system_attrs,
        )
        if not leave_running(n):
            if n % 5 == 4:
                rec.state = "failed"
            else:
                rec.state, rec.final = "complete", f(s.params)
        records.append(rec)
    return out


@pytest.mark.parametrize(
    ("algo", "n"),
    [("tpe", 16), ("random", 10), ("cmaes", 14), ("qmc", 10)],
)
def test_rebuilt_study_suggests_what_the_uninterrupted_one_does(algo: str, n: int) -> None:
    spec = make_spec(algo)
    assert rebuilt(spec, n) == uninterrupted(spec, n)


def test_same_seed_same_suggestions_other_seed_others() -> None:
    a = rebuilt(make_spec("tpe"), 12)
    assert a == rebuilt(make_spec("tpe"), 12)
    assert a != rebuilt(make_spec("tpe", algorithm={"seed": 4}), 12)


def test_null_seed_is_stable_per_study() -> None:
    spec = make_spec("random", algorithm={"seed": None})
    one = SearchState(spec, [], "ns/a").suggest().params
    assert one == SearchState(spec, [], "ns/a").suggest().params
    assert one != SearchState(spec, [], "ns/b").suggest().params


def test_running_trials_are_seen_constant_liar() -> None:
    """Parallel suggestions from one state differ (TPE's constant liar sees running trials)."""
    spec = make_spec("tpe", algorithm={"settings": {"n_startup_trials": 2}})
    records = [
        TrialRecord(number=i, params=p, state="complete", final=f(p))
        for i, p in enumerate(rebuilt(spec, 6))
    ]
    state = SearchState(spec, records, "k")
    batch = [state.suggest().params for _ in range(3)]
    assert len({tuple(sorted(b.items())) for b in batch}) == 3


def test_grid_covers_its_space_exactly_once_in_a_seeded_order() -> None:
    spec = make_spec("grid", maxTrials=100)
    size = S.grid_size(spec)
    assert size == 5 * 3 * 2
    assert S.effective_max_trials(spec) == size
    points = rebuilt(spec, size)
    every = {
        (x, lr, opt) for x in (-5.0, -2.5, 0.0, 2.5, 5.0) for lr in (1, 2, 3) for opt in ("adam", "sgd")
    }
    assert {(p["x"], p["lr"], p["opt"]) for p in points} == every  # every point, once
    assert len(points) == size
    assert points == rebuilt(spec, size)  # the same seed, the same order
    assert points != rebuilt(make_spec("grid", algorithm={"seed": 4}), size)
    assert S.grid_exhausted(spec, [TrialRecord(number=size - 1, params={})])


def test_grid_point_indexes_the_product_in_spec_order() -> None:
    spec = make_spec("grid")
    # mixed radix, the last dimension fastest: x (5) * lr (3) * opt (2)
    assert S.grid_point(spec, 0) == {"x": -5.0, "lr": 1, "opt": "adam"}
    assert S.grid_point(spec, 1) == {"x": -5.0, "lr": 1, "opt": "sgd"}
    assert S.grid_point(spec, 2) == {"x": -5.0, "lr": 2, "opt": "adam"}
    assert S.grid_point(spec, 29) == {"x": 5.0, "lr": 3, "opt": "sgd"}


def test_grid_stops_at_max_trials() -> None:
    spec = make_spec("grid", maxTrials=7)
    assert S.effective_max_trials(spec) == 7


def test_grid_trial_records_its_point_not_the_grid() -> None:
    spec = make_spec("grid")
    s = SearchState(spec, [], "k").suggest()
    assert s.system_attrs[S.GRID_INDEX] == S.grid_index(spec, 0, 3)
    assert len(json.dumps(s.system_attrs)) < 200


def test_a_huge_grid_is_counted_and_indexed_never_listed() -> None:
    """5 M points (float 0-1 step 2e-7) and 1e8 (the maximum): suggestions cost what a small
    grid's do, and records stay small (the issue: 1.48 GB and a 413 with Optuna's GridSampler)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for space, size in (
        ({"x": {"type": "float", "low": 0.0, "high": 1.0, "step": 2e-7}}, 5_000_001),
        ({"a": {"type": "int", "low": 0, "high": 9999}, "b": {"type": "int", "low": 0, "high": 9999}},
         100_000_000),
    ):
        spec = TuningStudySpec.model_validate({**make_spec("grid").wire(), "searchSpace": space})
        assert S.grid_size(spec) == size
        records: list[TrialRecord] = []
        for n in range(5):
            sug = SearchState(spec, records, "k").suggest()
            records.append(TrialRecord(number=n, params=sug.params, state="complete", final=1.0,
                                       system_attrs=sug.system_attrs))
        assert len({json.dumps(r.params, sort_keys=True) for r in records}) == 5
        assert all(len(json.dumps(r.system_attrs)) < 200 for r in records)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 50, grown_mb


def test_grid_above_the_maximum_is_refused_naming_the_field() -> None:
    from pydantic import ValidationError

    space = {"a": {"type": "int", "low": 0, "high": 99999}, "b": {"type": "int", "low": 0, "high": 9999}}
    with pytest.raises(ValidationError, match="searchSpace: algorithm grid has 1,000,000,000 points"):
        TuningStudySpec.model_validate({**make_spec("grid").wire(), "searchSpace": space})


def test_settings_pass_through() -> None:
    spec = make_spec("tpe", algorithm={"settings": {"n_startup_trials": 3, "multivariate": True}})
    sampler = S.build_sampler(spec, 0)
    assert sampler._n_startup_trials == 3 and sampler._multivariate is True  # type: ignore[attr-defined]
    spec = make_spec("cmaes", algorithm={"settings": {"sigma0": 0.3, "popsize": 6}})
    cma = S.build_sampler(spec, 0)
    assert cma._sigma0 == 0.3 and cma._popsize == 6  # type: ignore[attr-defined]
    spec = make_spec("qmc", algorithm={"settings": {"qmc_type": "halton", "scramble": True}})
    assert S.build_sampler(spec, 0)._qmc_type == "halton"  # type: ignore[attr-defined]
    spec = make_spec("tpe", "percentile", earlyStopping={"settings": {"percentile": 25.0}})
    pr = S.build_pruner(spec)
    assert isinstance(pr, optuna.pruners.PercentilePruner) and pr._percentile == 25.0
    spec = make_spec("tpe", "hyperband", earlyStopping={"settings": {"max_resource": 9}})
    assert S.build_pruner(spec)._max_resource == 9  # type: ignore[attr-defined]


def test_unknown_settings_are_refused_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="settings: algorithm 'tpe' does not accept"):
        make_spec("tpe", algorithm={"settings": {"n_startup_trails": 3}})


# --- objective -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "direction", "reports", "final", "want"),
    [
        ("last", "minimize", [(1, 0.5), (2, 0.3), (3, 0.4)], None, 0.4),
        ("last", "minimize", [(1, 0.5), (2, 0.3)], 0.35, 0.35),
        ("best", "minimize", [(1, 0.5), (2, 0.3), (3, 0.4)], 0.35, 0.3),
        ("best", "maximize", [(1, 0.5), (2, 0.9)], 0.7, 0.9),
        ("last", "maximize", [], None, None),
        ("best", "minimize", [(1, float("nan"))], None, None),
    ],
)
def test_objective_value(
    strategy: str,
    direction: str,
    reports: list[tuple[int, float]],
    final: float | None,
    want: float | None,
) -> None:
    obj = Objective(metric="m", direction=direction, strategy=strategy)  # type: ignore[arg-type]
    assert S.objective_value(reports, final, obj) == want


def test_target() -> None:
    assert S.target_reached(0.04, Objective(metric="m", target=0.05))
    assert not S.target_reached(0.06, Objective(metric="m", target=0.05))
    assert S.target_reached(0.96, Objective(metric="m", direction="maximize", target=0.95))
    assert not S.target_reached(0.01, Objective(metric="m"))


# --- pruning ---------------------------------------------------------------------------------


def curve(level: float, steps: int) -> list[tuple[int, float]]:
    return [(s, level + 1.0 / (s + 1)) for s in range(steps)]


def history(pruner: str, start_step: int = 0, **settings: Any) -> TuningStudySpec:
    return make_spec(
        "random", pruner, earlyStopping={"startStep": start_step, "settings": settings}
    )


def completed(n: int, steps: int = 6) -> list[TrialRecord]:
    return [
        TrialRecord(
            number=i,
            params={"x": 0.0, "lr": 0.01, "opt": "adam"},
            state="complete",
            reports=curve(1.0 + 0.1 * i, steps),
            final=1.0 + 0.1 * i,
        )
        for i in range(n)
    ]


def running(number: int, level: float, steps: int) -> TrialRecord:
    return TrialRecord(
        number=number, params={"x": 1.0, "lr": 0.01, "opt": "sgd"}, reports=curve(level, steps)
    )


@pytest.mark.parametrize(
    ("level", "steps", "start", "prune"),
    [(5.0, 3, 0, True), (0.1, 3, 0, False), (5.0, 3, 4, False), (5.0, 5, 4, True)],
)
def test_median_pruner(level: float, steps: int, start: int, prune: bool) -> None:
    spec = history("median", start, n_startup_trials=5)
    state = SearchState(spec, [*completed(5), running(5, level, steps)], "k")
    assert state.should_prune(5)[0] is prune
    assert state.prune_decisions()[5][0] is prune


def test_percentile_pruner() -> None:
    middling = 1.2  # between the completed trials' curves
    recs = [*completed(5), running(5, middling, 3)]
    top25 = history("percentile", percentile=25.0, n_startup_trials=5)
    top75 = history("percentile", percentile=75.0, n_startup_trials=5)
    assert SearchState(top25, recs, "k").should_prune(5)[0] is True
    assert SearchState(top75, recs, "k").should_prune(5)[0] is False


def test_no_pruning_without_reports_or_pruner() -> None:
    spec = history("median", n_startup_trials=0)
    state = SearchState(spec, [*completed(5), TrialRecord(number=5, params={})], "k")
    assert state.should_prune(5)[0] is False
    assert (
        SearchState(history("none"), [*completed(5), running(5, 9.0, 3)], "k").prune_decisions()
        == {}
    )


@pytest.mark.parametrize("pruner", ["median", "percentile", "hyperband", "successive-halving"])
def test_pruning_matches_a_live_optuna_study(pruner: str) -> None:
    """Trials report curves step by step; each decision of the rebuilt study equals the live
    study's `should_prune()`, and the pruner's system attributes (hyperband rungs) recorded on
    the trials are enough for later decisions."""
    settings: dict[str, Any] = {
        "median": {"n_startup_trials": 3},
        "percentile": {"percentile": 40.0, "n_startup_trials": 3},
        "hyperband": {"max_resource": 9, "reduction_factor": 3},
        "successive-halving": {"reduction_factor": 3},
    }[pruner]
    spec = history(pruner, 1, **settings)
    live = optuna.create_study(
        study_name="k",
        direction="minimize",
        pruner=S.build_pruner(spec),
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    records: list[TrialRecord] = []
    pruned_any = False
    for n in range(14):
        level = [1.0, 3.0, 0.5, 2.0][n % 4] + 0.01 * n
        t = live.ask({"x": optuna.distributions.FloatDistribution(-5, 5)})
        rec = TrialRecord(number=n, params=dict(t.params))
        records.append(rec)
        state_live = "complete"
        for step, value in curve(level, 9):
            t.report(value, step)
            rec.reports.append((step, value))
            want = t.should_prune() if step >= 1 else False
            got, attrs = SearchState(spec, records, "k").should_prune(n)
            rec.system_attrs = attrs
            assert got == bool(want), (n, step)
            if want:
                state_live = "pruned"
                break
        if state_live == "pruned":
            live.tell(t, state=optuna.trial.TrialState.PRUNED)
            rec.state = "pruned"
            pruned_any = True
        else:
            live.tell(t, rec.reports[-1][1])
            rec.state, rec.final = "complete", rec.reports[-1][1]
    assert pruned_any


def test_settings_optuna_refuses_are_an_invalid_spec_naming_the_field() -> None:
    """What an older CRD stored (before the bounds) still ends in InvalidSpec, not a crash loop."""
    from kubeforge.refusal import InvalidSpecError

    spec = make_spec("tpe", "percentile")
    S.check_runnable(spec)
    spec.early_stopping.settings["percentile"] = 200  # as stored before the CRD bounded it
    with pytest.raises(InvalidSpecError, match=r"^spec\.earlyStopping\.settings: Optuna refuses"):
        S.check_runnable(spec)
    spec = make_spec("qmc")
    spec.algorithm.settings["qmc_type"] = "bogus"
    with pytest.raises(InvalidSpecError, match=r"^spec\.algorithm\.settings"):
        S.check_runnable(spec)


def test_off_loop_runs_on_the_search_threads_and_is_bounded_in_time() -> None:
    import asyncio
    import threading
    import time

    async def main() -> tuple[str, bool]:
        name = await S.off_loop(lambda: threading.current_thread().name)
        try:
            await S.off_loop(time.sleep, 0.5, timeout=0.05)
        except TimeoutError:
            return name, True
        return name, False

    name, timed_out = asyncio.run(main())
    assert name.startswith("kubeforge-search") and timed_out

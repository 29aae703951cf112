"""warmStart.trials: earlier results enter the rebuilt study as completed trials, so the sampler
starts informed; they are not trials of the study."""

from __future__ import annotations

import random
from typing import Any

import pytest
from kubeforge.api.tuningstudy import TuningStudySpec
from kubeforge.refusal import InvalidSpecError
from kubeforge.tuningstudy.search import SearchState, TrialRecord, check_runnable


def f(p: dict[str, Any]) -> float:
    """The benchmark function: its minimum 0 at x = 1, y = -2."""
    return float((p["x"] - 1) ** 2 + (p["y"] + 2) ** 2)


def earlier(n: int = 30) -> list[dict[str, Any]]:
    rng = random.Random(42)
    out = []
    for _ in range(n):
        p = {"x": rng.uniform(-5, 5), "y": rng.uniform(-5, 5)}
        out.append({"params": p, "values": {"loss": f(p)}})
    return out


def spec(seed: int, warm: list[dict[str, Any]] | None = None, **over: Any) -> TuningStudySpec:
    raw: dict[str, Any] = {
        **({} if "objectives" in over else {"objective": {"metric": "loss"}}),
        "searchSpace": {
            "x": {"type": "float", "low": -5, "high": 5},
            "y": {"type": "float", "low": -5, "high": 5},
        },
        "algorithm": {"name": "tpe", "seed": seed},
        "trialTemplate": {"spec": {"command": ["train"]}},
        **over,
    }
    if warm is not None:
        raw["warmStart"] = {"trials": warm}
    return TuningStudySpec.model_validate(raw)


def test_first_suggestion_is_informed_and_better() -> None:
    cold = [f(SearchState(spec(seed), [], "k").suggest().params) for seed in range(10)]
    warm = [f(SearchState(spec(seed, earlier()), [], "k").suggest().params) for seed in range(10)]
    assert all(c != w for c, w in zip(cold, warm, strict=True))  # differs, seed by seed
    # better on the benchmark function: on average, and than the best earlier result would
    # suggest by chance (cold TPE's first trial is random)
    assert sum(warm) / len(warm) < 0.5 * sum(cold) / len(cold)


def test_the_study_keeps_its_own_numbers_and_rebuilds_the_same() -> None:
    s = spec(3, earlier())
    records: list[TrialRecord] = []
    seen = []
    for n in range(5):
        sug = SearchState(s, records, "k").suggest()
        assert sug.number == n  # warm trials take no number of the study
        seen.append(sug.params)
        records.append(
            TrialRecord(number=n, params=sug.params, state="complete", final=f(sug.params))
        )
    again = []
    rebuilt: list[TrialRecord] = []
    for n in range(5):
        sug = SearchState(s, rebuilt, "k").suggest()
        again.append(sug.params)
        rebuilt.append(
            TrialRecord(number=n, params=sug.params, state="complete", final=f(sug.params))
        )
    assert again == seen


def test_multi_objective_warm_start() -> None:
    objectives = [{"metric": "a"}, {"metric": "b", "direction": "maximize"}]
    warm = [{"params": {"x": 0.5, "y": 0.5}, "values": {"a": 1.0, "b": 2.0}}]
    s = spec(0, warm, objectives=objectives, algorithm={"name": "nsga2", "seed": 0})
    assert SearchState(s, [], "k").suggest().number == 0
    with pytest.raises(ValueError, match=r"values: needs exactly the objective metrics"):
        spec(0, [{"params": {"x": 0.5, "y": 0.5}, "values": {"a": 1.0}}], objectives=objectives)


def test_bad_warm_trials_are_refused_naming_the_field() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"warmStart.trials\[0\].params: \['z'\] are not"):
        spec(0, [{"params": {"x": 0, "y": 0, "z": 1}, "values": {"loss": 1}}])
    with pytest.raises(ValidationError, match=r"\['y'\] are missing"):
        spec(0, [{"params": {"x": 0}, "values": {"loss": 1}}])
    out_of_range = spec(0, [{"params": {"x": 9.0, "y": 0}, "values": {"loss": 1}}])
    with pytest.raises(InvalidSpecError, match=r"^spec\.warmStart: warmStart\.trials\[0\]\.params"):
        check_runnable(out_of_range)

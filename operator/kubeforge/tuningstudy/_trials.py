"""The study's trials as Optuna FrozenTrials: its own records, earlier results (warm start)
and placeholders for records that are gone."""

from __future__ import annotations

import datetime as _dt
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from kubeforge.api.tuningstudy import TuningStudySpec
from kubeforge.tuningstudy._records import TrialRecord

_STATES: dict[str, TrialState] = {
    "running": TrialState.RUNNING,
    "complete": TrialState.COMPLETE,
    "pruned": TrialState.PRUNED,
    "failed": TrialState.FAIL,
}
_EPOCH = _dt.datetime(2000, 1, 1, tzinfo=_dt.UTC)

def frozen_trial(
    record: TrialRecord,
    dists: dict[str, BaseDistribution],
    value: float | list[float] | None,
) -> FrozenTrial:
    """`value`: the objective value, or the list of values of a multi-objective study."""
    state = _STATES[record.state]
    params = {k: v for k, v in record.params.items() if k in dists}
    if state == TrialState.COMPLETE and value is None:
        state = TrialState.FAIL  # finished without the objective metric: a failure to the sampler
    start = _EPOCH + _dt.timedelta(seconds=record.number)
    done = state == TrialState.COMPLETE
    return FrozenTrial(
        number=record.number,
        state=state,
        value=value if done and not isinstance(value, list) else None,
        values=value if done and isinstance(value, list) else None,
        datetime_start=start,
        datetime_complete=None if state == TrialState.RUNNING else start,
        params=params,
        distributions={k: dists[k] for k in params},
        user_attrs={},
        system_attrs=dict(record.system_attrs),
        intermediate_values={int(s): float(v) for s, v in record.reports if v is not None},
        trial_id=record.number,
    )


WARM = "kubeforge:warm"
"""System attribute marking a trial of warmStart (not a trial of the study)."""


NSGA2_GENERATION = "NSGAIISampler:generation"
"""Where NSGA-II keeps a trial's generation; a trial without one is in no population, so
earlier trials are put in generation 0 (the first parents are chosen among them)."""


def earlier_trial(
    spec: TuningStudySpec,
    dists: dict[str, BaseDistribution],
    params: dict[str, Any],
    values: list[float],
) -> FrozenTrial:
    """A completed Optuna trial of an earlier result (ValueError: a parameter outside its
    distribution)."""
    attrs: dict[str, Any] = {WARM: True}
    if spec.algorithm.name == "nsga2":
        attrs[NSGA2_GENERATION] = 0
    return optuna.trial.create_trial(  # checks every parameter against its distribution
        params=dict(params),
        distributions={k: dists[k] for k in params},
        values=values,
        system_attrs=attrs,
    )


def warm_trials(spec: TuningStudySpec, dists: dict[str, BaseDistribution]) -> list[FrozenTrial]:
    """warmStart.trials as completed Optuna trials (raises ValueError for a parameter outside
    its distribution, which check_runnable turns into InvalidSpec)."""
    out = []
    metrics = [m for m, _ in spec.objective_list]
    for i, warm in enumerate(spec.warm_start.trials if spec.warm_start else []):
        values = [float(warm.values[m]) for m in metrics]
        try:
            out.append(earlier_trial(spec, dists, dict(warm.params), values))
        except ValueError as exc:
            raise ValueError(f"warmStart.trials[{i}].params: {exc}") from exc
    return out


def placeholder(number: int) -> FrozenTrial:
    """A trial whose record is gone (garbage-collected): a failure that samplers ignore."""
    start = _EPOCH + _dt.timedelta(seconds=number)
    return FrozenTrial(
        number=number,
        state=TrialState.FAIL,
        value=None,
        values=None,
        datetime_start=start,
        datetime_complete=start,
        params={},
        distributions={},
        user_attrs={},
        system_attrs={"kubeforge:missing": True},
        intermediate_values={},
        trial_id=number,
    )

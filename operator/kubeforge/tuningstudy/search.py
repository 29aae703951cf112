"""How a TuningStudy picks its next trial and prunes running ones (pure; Optuna, no database).

The operator keeps no search state of its own. Every decision starts from the study's *trial
records* (one per child TrainingJob: parameters, state, intermediate reports, final value and the
Optuna system attributes a sampler or pruner wrote), rebuilds an in-memory Optuna study
(`InMemoryStorage`) from them, and asks it. Because the rebuild is a pure function of the records,
an operator restart loses nothing.

Determinism: a sampler's random generator would drift between a long-lived study and a rebuilt
one, so each suggestion uses a fresh sampler seeded from `(algorithm.seed, trial number)`. The
samplers whose structure depends on the seed itself (grid: the order of the points; qmc: the
scrambled sequence) keep the study seed; qmc carries its progress in a study system attribute
(its sample counter) that the records restore. Grid is kubeforge's own, not Optuna's
GridSampler (which lists every point): trial n runs point perm(n) of a seeded bijection of the
point indices, each point found arithmetically (mixed radix), so a grid of any size costs O(1)
memory and each point runs once; the trial records its point's index (`grid_id`). The result: the same records always
give the same next suggestion, whether the study was interrupted or not.

Parallel trials: running trials are added to the rebuilt study as RUNNING with their parameters,
so TPE's constant liar (on by default) sees them, grid's numbering has moved past them, qmc's counter
has moved past them, and CMA-ES counts them in its generation.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import functools
import logging
import math
import warnings
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.storages import InMemoryStorage
from optuna.trial import FrozenTrial, TrialState

from kubeforge.api._tuning_objective import Objective
from kubeforge.api._tuning_space import SearchParameter
from kubeforge.api.tuningstudy import TuningStudySpec
from kubeforge.refusal import InvalidSpecError

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", module="optuna")

log = logging.getLogger("kubeforge.tuningstudy")

SEARCH_WORKERS = 2
"""Threads that run search decisions: the event loop never runs Optuna, and at most this many
studies decide at once (the rest wait their turn, bounding CPU and memory)."""
SEARCH_TIMEOUT_SECONDS = 60.0
"""A decision that takes longer is abandoned (TimeoutError: retried with backoff, shown as
Synced=False on the study)."""
_POOL = ThreadPoolExecutor(max_workers=SEARCH_WORKERS, thread_name_prefix="kubeforge-search")

TrialStateName = Literal["running", "complete", "pruned", "failed"]

_STATES: dict[str, TrialState] = {
    "running": TrialState.RUNNING,
    "complete": TrialState.COMPLETE,
    "pruned": TrialState.PRUNED,
    "failed": TrialState.FAIL,
}
_EPOCH = _dt.datetime(2000, 1, 1, tzinfo=_dt.UTC)

# Samplers whose structure is fixed by the study seed (kept constant across suggestions).
_STUDY_SEEDED = ("grid", "qmc")

GRID_INDEX = "grid_id"
"""The system attribute recording a grid trial's point (one integer: the point, not the grid)."""


@dataclass
class TrialRecord:
    """Everything the search needs to know about one trial (read from its TrainingJob)."""

    number: int
    params: dict[str, Any]
    state: TrialStateName = "running"
    reports: list[tuple[int, float]] = field(default_factory=list)
    """Intermediate values of the objective metric, (step, value), by step."""
    final: float | None = None
    """The objective metric of the final metrics (None: not reported)."""
    finals: dict[str, float] = field(default_factory=dict)
    """Final values of a multi-objective study's metrics (those the trial reported)."""
    system_attrs: dict[str, Any] = field(default_factory=dict)
    """Optuna system attributes of the trial (grid_id, CMA-ES state, hyperband rungs, ...)."""
    study_system_attrs: dict[str, Any] = field(default_factory=dict)
    """Optuna study system attributes right after this trial was suggested (qmc's counter)."""

    def value(self, objective: Objective) -> float | None:
        """The trial's objective value by `objective.strategy` (None: none reported)."""
        return objective_value(self.reports, self.final, objective)

    def values(self, metrics: Sequence[str]) -> list[float] | None:
        """Its final value of every metric, in order (None: one is missing)."""
        out = [self.finals.get(m) for m in metrics]
        return None if any(v is None for v in out) else [float(v) for v in out if v is not None]


@dataclass(frozen=True)
class Suggestion:
    """A new trial: its parameters and what must be recorded with it."""

    number: int
    params: dict[str, Any]
    system_attrs: dict[str, Any]
    study_system_attrs: dict[str, Any]


# --- objective -------------------------------------------------------------------------------


def objective_value(
    reports: Sequence[tuple[int, float]], final: float | None, objective: Objective
) -> float | None:
    """`last`: the final metric, else the last report; `best`: the best of all of them."""
    finite = [v for _, v in reports if v is not None and math.isfinite(v)]
    if objective.strategy == "best":
        if final is not None and math.isfinite(final):
            finite.append(final)
        if not finite:
            return None
        return min(finite) if objective.direction == "minimize" else max(finite)
    if final is not None and math.isfinite(final):
        return final
    return finite[-1] if finite else None


def better(a: float, b: float | None, direction: str) -> bool:
    """Whether value `a` is strictly better than `b` (None: anything is better)."""
    if b is None:
        return True
    return a < b if direction == "minimize" else a > b


def target_reached(value: float | None, objective: Objective) -> bool:
    """Whether `value` reaches `objective.target` (False when no target is set)."""
    if value is None or objective.target is None:
        return False
    if objective.direction == "minimize":
        return value <= objective.target
    return value >= objective.target


# --- search space, sampler, pruner ---------------------------------------------------------


def distribution(p: SearchParameter) -> BaseDistribution:
    """The Optuna distribution of one search dimension."""
    if p.type == "categorical":
        return CategoricalDistribution(list(p.choices or []))
    assert p.low is not None and p.high is not None
    if p.type == "int":
        return IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
    return FloatDistribution(p.low, p.high, log=p.log, step=p.step)


def distributions(spec: TuningStudySpec) -> dict[str, BaseDistribution]:
    """Name → distribution, in the spec's order (which is also the sampling order)."""
    return {name: distribution(p) for name, p in spec.search_space.items()}


def grid_size(spec: TuningStudySpec) -> int | None:
    """Points of the grid (algorithm grid), else None: counted, never listed."""
    return spec.grid_size()


def _grid_permutation(size: int, seed: int) -> tuple[int, int]:
    """(a, b) of the bijection i -> (a*i + b) mod size that orders the grid (seeded, so the order
    is the study's own and not the spec's; a bijection, so each point runs once)."""
    if size <= 1:
        return 1, 0
    a = trial_seed(seed, -1) % size or 1
    while math.gcd(a, size) != 1:  # at most a few steps: coprimes are dense
        a = a % size + 1
    return a, trial_seed(seed, -2) % size


def grid_index(spec: TuningStudySpec, number: int, seed: int) -> int:
    """The grid point (its index in the product of the dimensions) of trial `number`."""
    size = grid_size(spec)
    assert size is not None and 0 <= number < size
    a, b = _grid_permutation(size, seed)
    return (a * number + b) % size


def grid_point(spec: TuningStudySpec, index: int) -> dict[str, Any]:
    """The parameters of grid point `index` (mixed radix over the dimensions, in spec order)."""
    params: dict[str, Any] = {}
    for name, p in reversed(list(spec.search_space.items())):
        index, digit = divmod(index, p.grid_size())
        params[name] = p.grid_value(digit)
    return {name: params[name] for name in spec.search_space}


def effective_max_trials(spec: TuningStudySpec) -> int:
    """maxTrials, capped by the grid's size for algorithm grid (each point runs once)."""
    size = grid_size(spec)
    return spec.max_trials if size is None else min(spec.max_trials, size)


def base_seed(spec: TuningStudySpec, study_key: str) -> int:
    """algorithm.seed, or (seed null) one derived from the study's identity, stable across
    restarts."""
    if spec.algorithm.seed is not None:
        return spec.algorithm.seed
    return zlib.crc32(study_key.encode())


def trial_seed(seed: int, number: int) -> int:
    """The seed of the sampler that suggests trial `number`."""
    return zlib.crc32(f"{seed}/{number}".encode())


def build_sampler(spec: TuningStudySpec, number: int, study_key: str = "") -> BaseSampler:
    """The Optuna sampler that suggests trial `number` (settings passed through)."""
    algo = spec.algorithm
    settings = dict(algo.settings)
    seed = base_seed(spec, study_key)
    if algo.name not in _STUDY_SEEDED:
        seed = trial_seed(seed, number)
    if algo.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if algo.name == "grid":
        # never Optuna's GridSampler: it lists every point (and writes the whole grid into each
        # trial's system attributes); SearchState.suggest indexes the point instead
        return optuna.samplers.RandomSampler(seed=seed)
    if algo.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **settings)
    if algo.name == "cmaes":
        settings.setdefault("warn_independent_sampling", False)
        return optuna.samplers.CmaEsSampler(seed=seed, **settings)
    if algo.name == "nsga2":
        # NSGA-II keeps its generation and parents in trial system attributes, which the
        # records carry, so the rebuilt study continues the same population.
        return optuna.samplers.NSGAIISampler(seed=seed, **settings)
    if algo.name == "qmc":
        settings.setdefault("warn_asynchronous_seeding", False)
        return optuna.samplers.QMCSampler(seed=seed, **settings)
    raise ValueError(f"unknown algorithm {algo.name!r}")


def build_pruner(spec: TuningStudySpec) -> BasePruner:
    """The Optuna pruner of earlyStopping (startStep is the warm-up; settings passed through)."""
    es = spec.early_stopping
    settings = dict(es.settings)
    if es.name == "none":
        return optuna.pruners.NopPruner()
    if es.name == "median":
        settings.setdefault("n_warmup_steps", es.start_step)
        return optuna.pruners.MedianPruner(**settings)
    if es.name == "percentile":
        settings.setdefault("percentile", 50.0)
        settings.setdefault("n_warmup_steps", es.start_step)
        return optuna.pruners.PercentilePruner(**settings)
    if es.name == "hyperband":
        settings.setdefault("min_resource", max(1, es.start_step))
        return optuna.pruners.HyperbandPruner(**settings)
    if es.name == "successive-halving":
        # ASHA: a trial is promoted past a rung only when it is in the top 1/reduction_factor
        # of the trials that reached that rung; the rungs it passed are recorded in its system
        # attributes (completed_rung_*), which the trial records carry across rebuilds.
        settings.setdefault("min_resource", max(1, es.start_step))
        return optuna.pruners.SuccessiveHalvingPruner(**settings)
    raise ValueError(f"unknown earlyStopping {es.name!r}")


# --- the rebuilt study -----------------------------------------------------------------------


def _frozen(
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


class SearchState:
    """An in-memory Optuna study rebuilt from trial records."""

    def __init__(
        self,
        spec: TuningStudySpec,
        records: Iterable[TrialRecord],
        study_key: str = "study",
        next_number: int = 0,
        warm: Sequence[FrozenTrial] | None = None,
    ) -> None:
        """`warm`: the earlier trials to start from (default: spec.warmStart.trials; the
        reconcile passes those plus warmStart.fromStudies')."""
        self.spec = spec
        self.study_key = study_key
        self.dists = distributions(spec)
        self.records = sorted(records, key=lambda r: r.number)
        self.storage = InMemoryStorage()
        self.metrics = [m for m, _ in spec.objective_list]
        self.study = optuna.create_study(
            storage=self.storage,
            study_name=study_key,
            directions=[d for _, d in spec.objective_list],
            sampler=optuna.samplers.RandomSampler(seed=0),
            pruner=build_pruner(spec),
        )
        self.study_id = self.study._study_id
        self.trial_ids: dict[int, int] = {}
        # The latest study system attributes recorded (qmc's counter) win.
        study_attrs: dict[str, Any] = {}
        for rec in self.records:
            study_attrs.update(rec.study_system_attrs)
        for key, value in study_attrs.items():
            self.storage.set_study_system_attr(self.study_id, key, value)
        # warmStart.trials go in first, as completed trials: Optuna numbers them 0..W-1, so the
        # study's own trial n is Optuna's n + W (the offset is constant: warmStart is immutable).
        self.offset = 0
        for earlier in warm_trials(spec, self.dists) if warm is None else warm:
            self.storage.create_new_trial(self.study_id, template_trial=earlier)
            self.offset += 1
        expected = 0
        for rec in self.records:
            while expected < rec.number:  # keep Optuna's numbers equal to ours
                self.storage.create_new_trial(self.study_id, template_trial=placeholder(expected))
                expected += 1
            value = (
                rec.values(self.metrics)
                if spec.multi_objective
                else rec.value(spec.primary_objective)
            )
            frozen = _frozen(rec, self.dists, value)
            self.trial_ids[rec.number] = self.storage.create_new_trial(
                self.study_id, template_trial=frozen
            )
            expected = rec.number + 1
        while expected < next_number:  # trials handed out whose records are gone
            self.storage.create_new_trial(self.study_id, template_trial=placeholder(expected))
            expected += 1
        self.next_number = expected

    # --- suggestions ---

    def suggest(self) -> Suggestion:
        """The next trial (number = one past the last record)."""
        number = self.next_number
        self.study.sampler = build_sampler(self.spec, number, self.study_key)
        index = None
        if self.spec.algorithm.name == "grid":
            index = grid_index(self.spec, number, base_seed(self.spec, self.study_key))
            self.study.enqueue_trial(grid_point(self.spec, index))
        trial = self.study.ask(fixed_distributions=None)
        if index is not None:
            self.storage.set_trial_system_attr(trial._trial_id, GRID_INDEX, index)
        assert trial.number == number + self.offset, (trial.number, number, self.offset)
        for name, dist in self.dists.items():
            trial._suggest(name, dist)
        frozen = self.storage.get_trial(trial._trial_id)
        study_attrs = self.storage.get_study_system_attrs(self.study_id)
        self.next_number += 1
        self.trial_ids[number] = trial._trial_id
        return Suggestion(
            number=number,
            params=dict(frozen.params),
            system_attrs=dict(frozen.system_attrs),
            study_system_attrs=dict(study_attrs),
        )

    # --- pruning ---

    def should_prune(self, number: int) -> tuple[bool, dict[str, Any]]:
        """Whether running trial `number` should be pruned now, and its system attributes after
        the pruner looked (successive halving records the rungs a trial completed)."""
        rec = next((r for r in self.records if r.number == number), None)
        trial_id = self.trial_ids.get(number)
        if rec is None or trial_id is None or rec.state != "running" or not rec.reports:
            return False, dict(rec.system_attrs) if rec else {}
        last_step = max(s for s, _ in rec.reports)
        frozen = self.storage.get_trial(trial_id)
        decision = False
        if last_step >= self.spec.early_stopping.start_step:
            decision = bool(self.study.pruner.prune(self.study, frozen))
        attrs = dict(self.storage.get_trial_system_attrs(trial_id))
        return decision, attrs

    def prune_decisions(self) -> dict[int, tuple[bool, dict[str, Any]]]:
        """should_prune for every running trial with reports."""
        if self.spec.early_stopping.name == "none":
            return {}
        return {
            r.number: self.should_prune(r.number)
            for r in self.records
            if r.state == "running" and r.reports
        }


def suggest(
    spec: TuningStudySpec, records: Iterable[TrialRecord], study_key: str = "study"
) -> Suggestion:
    """Rebuild the study from `records` and suggest the next trial."""
    return SearchState(spec, records, study_key).suggest()


def grid_exhausted(spec: TuningStudySpec, records: Sequence[TrialRecord]) -> bool:
    """Algorithm grid: every point has a trial already."""
    size = grid_size(spec)
    if size is None:
        return False
    next_number = max((r.number for r in records), default=-1) + 1
    return next_number >= size


def check_runnable(spec: TuningStudySpec) -> None:
    """Build the spec's sampler and pruner once: settings Optuna's constructors refuse (what the
    CRD and the models could not foresee) raise InvalidSpecError naming the field."""
    try:
        build_sampler(spec, 0)
    except (ValueError, TypeError) as exc:
        raise InvalidSpecError("spec.algorithm.settings", f"Optuna refuses them: {exc}") from exc
    try:
        build_pruner(spec)
    except (ValueError, TypeError) as exc:
        raise InvalidSpecError("spec.earlyStopping.settings", f"Optuna refuses them: {exc}") from exc
    try:
        warm_trials(spec, distributions(spec))
    except (ValueError, TypeError) as exc:
        raise InvalidSpecError("spec.warmStart", str(exc)) from exc


async def off_loop(fn: Callable[..., Any], *args: Any, timeout: float = SEARCH_TIMEOUT_SECONDS) -> Any:
    """`fn(*args)` on the search threads, awaited from the event loop (which stays free for
    watches, other objects and the health endpoint)."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(_POOL, functools.partial(fn, *args))
    return await asyncio.wait_for(future, timeout)

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
import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import optuna
from optuna.storages import InMemoryStorage
from optuna.trial import FrozenTrial

from kubeforge.api.tuningstudy import TuningStudySpec
from kubeforge.refusal import InvalidSpecError
from kubeforge.tuningstudy._records import (
    Suggestion,
    TrialRecord,
    objective_value,
    target_reached,
)
from kubeforge.tuningstudy._sampling import build_pruner, build_sampler
from kubeforge.tuningstudy._space import (
    GRID_INDEX,
    base_seed,
    distributions,
    effective_max_trials,
    grid_index,
    grid_point,
    grid_size,
)
from kubeforge.tuningstudy._trials import (
    NSGA2_GENERATION,
    frozen_trial,
    placeholder,
    warm_trials,
)

# The study's parts live in private modules (_records, _space, _sampling, _trials); these names
# stay importable from here for the tests and the benchmarks.
__all__ = [
    "GRID_INDEX",
    "NSGA2_GENERATION",
    "SEARCH_TIMEOUT_SECONDS",
    "SEARCH_WORKERS",
    "SearchState",
    "Suggestion",
    "TrialRecord",
    "build_pruner",
    "build_sampler",
    "check_runnable",
    "distributions",
    "effective_max_trials",
    "grid_exhausted",
    "grid_index",
    "grid_point",
    "grid_size",
    "objective_value",
    "off_loop",
    "suggest",
    "target_reached",
]

log = logging.getLogger("kubeforge.tuningstudy")

SEARCH_WORKERS = 2
"""Threads that run search decisions: the event loop never runs Optuna, and at most this many
studies decide at once (the rest wait their turn, bounding CPU and memory)."""
SEARCH_TIMEOUT_SECONDS = 60.0
"""A decision that takes longer is abandoned (TimeoutError: retried with backoff, shown as
Synced=False on the study)."""
_POOL = ThreadPoolExecutor(max_workers=SEARCH_WORKERS, thread_name_prefix="kubeforge-search")


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
            frozen = frozen_trial(rec, self.dists, value)
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

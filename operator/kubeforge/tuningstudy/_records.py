"""What the search knows of each trial (TrialRecord), what it hands out (Suggestion), and a
trial's objective value."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from kubeforge.api._tuning_objective import Objective

TrialStateName = Literal["running", "complete", "pruned", "failed"]

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

"""Which finished trials are best: the Pareto front of several objectives, and the rule that
picks one trial (bestTrial, what `promote` serves). Pure functions over plain values.

- A trial *dominates* another when it is at least as good on every objective and better on one.
  The Pareto front is the set of finished trials no other finished trial dominates.
- `promote.select: {maximize|minimize: METRIC, subjectTo: {METRIC: {max, min}}}` picks, among the
  finished trials that keep every bound (a trial lacking a bounded metric does not), the one with
  the best value of METRIC; ties go to the lower trial number, so the choice is stable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from kubeforge.api._tuning_objective import Bound

Direction = str  # "minimize" | "maximize"
Key = TypeVar("Key", int, tuple[int, int])
"""A candidate: a trial number, or (trial number, variant index) when a trial's float and int8
models compete (float first, so a tie keeps the float model)."""


def _loss(values: Sequence[float], directions: Sequence[Direction]) -> tuple[float, ...]:
    """Values turned into losses (lower is better on every axis)."""
    return tuple(v if d == "minimize" else -v for v, d in zip(values, directions, strict=True))


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[Direction]) -> bool:
    """Whether `a` is at least as good as `b` on every objective and better on one."""
    la, lb = _loss(a, directions), _loss(b, directions)
    return all(x <= y for x, y in zip(la, lb, strict=True)) and la != lb


def pareto_front(
    points: Mapping[int, Sequence[float]], directions: Sequence[Direction]
) -> list[int]:
    """The trial numbers on the front, best first by the first objective (then the next ones,
    then the number).

    Sorted by loss lexicographically, a point can only be dominated by points before it, so one
    sweep that compares each point with the front found so far is enough: O(n log n + n·|front|).
    """
    order = sorted(points, key=lambda n: (_loss(points[n], directions), n))
    front: list[int] = []
    for n in order:
        if not any(dominates(points[f], points[n], directions) for f in front):
            front.append(n)
    return front


@dataclass(frozen=True)
class Rule:
    """Pick the best `metric` in `direction` among trials within `bounds`."""

    metric: str
    direction: Direction
    bounds: Mapping[str, Bound]

    def feasible(self, metrics: Mapping[str, float]) -> bool:
        return all(bound.holds(metrics.get(name)) for name, bound in self.bounds.items())

    def better(self, a: float, b: float) -> bool:
        return a < b if self.direction == "minimize" else a > b


def select(
    candidates: Mapping[Key, tuple[float | None, Mapping[str, float]]], rule: Rule
) -> Key | None:
    """The candidate the rule picks. `candidates`: key → (its value of the rule's metric, its
    final metrics for the bounds). None when no candidate has a value and keeps the bounds; ties
    go to the lowest key."""
    best: Key | None = None
    best_value: float | None = None
    for number in sorted(candidates):
        value, metrics = candidates[number]
        if value is None or not rule.feasible(metrics):
            continue
        if best_value is None or rule.better(value, best_value):
            best, best_value = number, value
    return best

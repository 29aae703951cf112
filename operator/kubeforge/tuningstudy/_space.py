"""The search space as Optuna distributions, the seeds, and kubeforge's own grid (a seeded
order over the points, each point found arithmetically)."""

from __future__ import annotations

import math
import zlib
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from kubeforge.api._tuning_space import SearchParameter
from kubeforge.api.tuningstudy import TuningStudySpec

GRID_INDEX = "grid_id"
"""The system attribute recording a grid trial's point (one integer: the point, not the grid)."""


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

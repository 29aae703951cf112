"""The Optuna sampler (algorithm) and pruner (earlyStopping) of a spec, settings passed through."""

from __future__ import annotations

import warnings

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler

from kubeforge.api.tuningstudy import TuningStudySpec
from kubeforge.tuningstudy._space import base_seed, trial_seed

# Set where samplers are built (every module that runs Optuna imports this one): Optuna's INFO
# logs and its experimental-feature warnings stay out of the operator's log.
optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", module="optuna")

# Samplers whose structure is fixed by the study seed (kept constant across suggestions).
_STUDY_SEEDED = ("grid", "qmc")

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

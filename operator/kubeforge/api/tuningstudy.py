"""TuningStudy: search hyperparameters by running trials as TrainingJobs."""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from kubeforge.api._base import FREE_FORM, KubeModel, cel, rule
from kubeforge.api.common import (
    HYPERPARAMETER_NAME,
    Condition,
    conditions_field,
    hp_collision_rule,
    hp_env_name,
)
from kubeforge.api.trainingjob import TrainingJobSpec

# Keyword arguments each Optuna sampler / pruner accepts through `settings` (Optuna 5), with
# their JSON types. `seed` comes from algorithm.seed; the pruners' warm-up from startStep.
_INT, _NUM, _BOOL, _STR = "integer", "number", "boolean", "string"
_SAMPLER_TYPES: dict[str, dict[str, str]] = {
    "random": {},
    "grid": {},
    "tpe": {
        "consider_prior": _BOOL, "prior_weight": _NUM, "consider_magic_clip": _BOOL,
        "consider_endpoints": _BOOL, "n_startup_trials": _INT, "n_ei_candidates": _INT,
        "multivariate": _BOOL, "group": _BOOL, "warn_independent_sampling": _BOOL,
        "constant_liar": _BOOL,
    },
    "cmaes": {
        "sigma0": _NUM, "n_startup_trials": _INT, "warn_independent_sampling": _BOOL,
        "consider_pruned_trials": _BOOL, "restart_strategy": _STR, "popsize": _INT,
        "inc_popsize": _INT, "use_separable_cma": _BOOL, "with_margin": _BOOL, "lr_adapt": _BOOL,
    },
    "gp": {"n_startup_trials": _INT, "deterministic_objective": _BOOL,
           "warn_independent_sampling": _BOOL},
    "qmc": {"qmc_type": _STR, "scramble": _BOOL, "warn_independent_sampling": _BOOL,
            "warn_asynchronous_seeding": _BOOL},
}
_PRUNER_TYPES: dict[str, dict[str, str]] = {
    "none": {},
    "median": {"n_startup_trials": _INT, "interval_steps": _INT, "n_min_trials": _INT},
    "percentile": {"percentile": _NUM, "n_startup_trials": _INT, "interval_steps": _INT,
                   "n_min_trials": _INT},
    "hyperband": {"max_resource": _INT, "reduction_factor": _INT, "bootstrap_count": _INT},
}
SAMPLER_SETTINGS: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in _SAMPLER_TYPES.items()}
PRUNER_SETTINGS: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in _PRUNER_TYPES.items()}


def _settings_schema(table: dict[str, dict[str, str]], what: str) -> dict[str, Any]:
    """The CRD schema of `settings`: every keyword any of them takes, typed (an unknown key is
    refused by the API server's field validation, naming it)."""
    props: dict[str, Any] = {}
    for name, keys in table.items():
        for key, typ in keys.items():
            entry = props.setdefault(key, {"type": typ, "used_by": []})
            entry["used_by"].append(name)
    for key, entry in props.items():
        entry["description"] = f"Optuna keyword argument `{key}` of {what} " + ", ".join(
            entry.pop("used_by")
        ) + "."
    return {"x-kubeforge-properties": props, "maxProperties": 16}


def _allow_list_rules(table: dict[str, dict[str, str]], what: str) -> list[dict[str, str]]:
    every = sorted({k for keys in table.values() for k in keys})
    out = []
    for name, keys in table.items():
        banned = [k for k in every if k not in keys]
        if not banned:
            continue
        out.append(
            rule(
                f"self.name != '{name}' || !("
                + " || ".join(f"has(self.settings.{k})" for k in banned)
                + ")",
                f"settings: {what} '{name}' accepts only: {', '.join(keys) or 'nothing'}",
                field_path=".settings",
            )
        )
    return out


def _check_settings(table: dict[str, tuple[str, ...]], name: str, settings: dict[str, Any],
                    what: str) -> None:
    unknown = sorted(set(settings) - set(table[name]))
    if unknown:
        raise ValueError(
            f"settings: {what} '{name}' does not accept {unknown}; it accepts only: "
            f"{', '.join(table[name]) or 'nothing'}"
        )


class Objective(KubeModel):
    """What the study optimises."""

    metric: str = Field(
        description="The metric trials report, e.g. val_loss.", pattern=r"^[A-Za-z_][A-Za-z0-9_./-]*$"
    )
    direction: Literal["minimize", "maximize"] = Field(
        default="minimize", description="minimize or maximize."
    )
    target: float | None = Field(
        default=None, description="Stop the study (Succeeded) once a trial reaches this value."
    )
    strategy: Literal["last", "best"] = Field(
        default="last", description="A trial's value: the last value it reported, or its best."
    )


class SearchParameter(KubeModel):
    """One dimension of the search space."""

    # CEL cannot type a list of mixed scalars, so the rules about `choices` are structural
    # junctors: a categorical has choices (and no bounds), a float/int has bounds (no choices).
    model_config = {**KubeModel.model_config, "json_schema_extra": {**cel(
        rule("self.type == 'categorical' || (has(self.low) && has(self.high) && self.low < self.high)",
             "float and int parameters need low < high"),
        rule("self.type != 'categorical' || (!has(self.low) && !has(self.high) && !has(self.step) "
             "&& !self.log)", "low, high, step and log do not apply to type categorical"),
        rule("!(self.log && has(self.step))", "log and step cannot be combined", field_path=".log"),
        rule("!self.log || (has(self.low) && self.low > 0.0)", "log needs low > 0",
             field_path=".low"),
        rule("!has(self.step) || self.step > 0.0", "step must be > 0", field_path=".step"),
    ), "x-kubeforge-any-of": [
        {"properties": {"type": {"enum": ["categorical"]}}, "required": ["choices"]},
        {"properties": {"type": {"enum": ["float", "int"]}}, "not": {"required": ["choices"]}},
    ]}}

    type: Literal["float", "int", "categorical"] = Field(description="float, int or categorical.")
    low: float | None = Field(default=None, description="Lower bound (float, int).")
    high: float | None = Field(default=None, description="Upper bound, inclusive (float, int).")
    log: bool = Field(default=False, description="Sample on a log scale.")
    step: float | None = Field(
        default=None, description="Discretisation step (on float: makes a finite grid)."
    )
    choices: list[Any] | None = Field(
        default=None,
        description="Choices of a categorical parameter: strings, numbers or booleans.",
        min_length=1,
        max_length=256,
        json_schema_extra={"items": FREE_FORM},
    )

    @field_validator("choices")
    @classmethod
    def _scalar_choices(cls, value: list[Any] | None) -> list[Any] | None:
        if value is not None:
            for c in value:
                if not isinstance(c, str | int | float | bool) or c is None:
                    raise ValueError(f"choices must be strings, numbers or booleans, not {c!r}")
            if len({repr(c) for c in value}) != len(value):
                raise ValueError("choices must be unique")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SearchParameter:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs choices")
            if self.low is not None or self.high is not None or self.step is not None or self.log:
                raise ValueError("low, high, step and log do not apply to type categorical")
            return self
        if self.choices is not None:
            raise ValueError("choices apply only to type categorical")
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError("float and int parameters need low < high")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        if self.log and self.low <= 0:
            raise ValueError("log needs low > 0")
        if self.step is not None and self.step <= 0:
            raise ValueError("step must be > 0")
        if self.type == "int":
            for name in ("low", "high", "step"):
                v = getattr(self, name)
                if v is not None and not float(v).is_integer():
                    raise ValueError(f"{name} of an int parameter must be a whole number")
        return self

    @property
    def finite(self) -> bool:
        return self.type != "float" or self.step is not None

    def grid_points(self) -> list[Any]:
        """Every value of a finite dimension, in order."""
        if self.type == "categorical":
            return list(self.choices or [])
        assert self.low is not None and self.high is not None
        if self.type == "int":
            step = int(self.step or 1)
            return list(range(int(self.low), int(self.high) + 1, step))
        assert self.step is not None
        n = math.floor((self.high - self.low) / self.step + 1e-9)
        return [round(self.low + i * self.step, 12) for i in range(n + 1)]


class Algorithm(KubeModel):
    """The search algorithm: an Optuna sampler."""

    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        *_allow_list_rules(_SAMPLER_TYPES, "algorithm"))}

    name: Literal["random", "grid", "tpe", "cmaes", "gp", "qmc"] = Field(
        default="tpe", description="random, grid, tpe, cmaes, gp or qmc (Optuna samplers)."
    )
    seed: int | None = Field(default=0, description="Sampler seed (same seed, same suggestions).")
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of the Optuna sampler, allow-listed per name.",
        json_schema_extra=_settings_schema(_SAMPLER_TYPES, "sampler"),
    )

    @model_validator(mode="after")
    def _allowed(self) -> Algorithm:
        _check_settings(SAMPLER_SETTINGS, self.name, self.settings, "algorithm")
        return self


class EarlyStopping(KubeModel):
    """Early stopping of bad trials: an Optuna pruner fed by the trials' intermediate reports."""

    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        *_allow_list_rules(_PRUNER_TYPES, "earlyStopping"))}

    name: Literal["none", "median", "percentile", "hyperband"] = Field(
        default="none", description="none, median, percentile or hyperband (Optuna pruners)."
    )
    start_step: int = Field(
        default=2, ge=0, description="Never prune a trial before it reported this step."
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of the Optuna pruner, allow-listed per name.",
        json_schema_extra=_settings_schema(_PRUNER_TYPES, "pruner"),
    )

    @model_validator(mode="after")
    def _allowed(self) -> EarlyStopping:
        _check_settings(PRUNER_SETTINGS, self.name, self.settings, "earlyStopping")
        return self


class TrialTemplate(KubeModel):
    spec: TrainingJobSpec = Field(
        description="The TrainingJob spec of every trial; suggestions are merged into its "
        "hyperparameters (so HP_* and $(HP_*) work)."
    )
    retain: bool = Field(
        default=False,
        description="Keep finished trials' Jobs and pods; false lets them go (the trial "
        "TrainingJobs stay as the record).",
    )


class Promote(KubeModel):
    model_deployment: str = Field(
        description="A ModelDeployment pointed at the best trial's model once the study succeeds "
        "(created if absent).",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length=63,
    )


class TuningStudySpec(KubeModel):
    """The desired search."""

    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        rule(
            "self.algorithm.name != 'grid' || self.searchSpace.all(k, "
            "self.searchSpace[k].type != 'float' || has(self.searchSpace[k].step))",
            "algorithm grid needs a finite search space: give every float parameter a step",
            field_path=".searchSpace",
        ),
        rule("self.searchSpace == oldSelf.searchSpace",
             "spec.searchSpace is immutable: create a new study", field_path=".searchSpace"),
        rule("self.objective == oldSelf.objective",
             "spec.objective is immutable: create a new study", field_path=".objective"),
        rule("self.algorithm == oldSelf.algorithm",
             "spec.algorithm is immutable: create a new study", field_path=".algorithm"),
    )}

    objective: Objective = Field(description="The metric to optimise and how.")
    search_space: dict[str, SearchParameter] = Field(
        description="Hyperparameters to search, by name.",
        min_length=1,
        json_schema_extra={
            "maxProperties": 32,
            **cel(
                rule("self.all(k, k.matches('" + HYPERPARAMETER_NAME.replace("\\", "\\\\") + "'))",
                     "parameter names must match " + HYPERPARAMETER_NAME),
                hp_collision_rule(),
            ),
        },
    )
    algorithm: Algorithm = Field(default_factory=Algorithm, description="The sampler.")
    early_stopping: EarlyStopping = Field(
        default_factory=EarlyStopping, description="The pruner."
    )
    max_trials: int = Field(
        default=50, ge=1, le=100000,
        description="Trials in all; raising it on a finished study continues it.",
    )
    parallelism: int = Field(default=4, ge=1, le=1000, description="Trials running at once.")
    max_failed_trials: int = Field(
        default=3, ge=0, description="Fail the study once this many trials failed (pruned is not failed)."
    )
    trial_template: TrialTemplate = Field(description="How each trial runs.")
    promote: Promote | None = Field(default=None, description="Serve the best model.")

    @field_validator("search_space")
    @classmethod
    def _names(cls, value: dict[str, SearchParameter]) -> dict[str, SearchParameter]:
        seen: dict[str, str] = {}
        for name in value:
            if not re.match(HYPERPARAMETER_NAME, name):
                raise ValueError(f"parameter name {name!r} must match {HYPERPARAMETER_NAME}")
            env = hp_env_name(name)
            if env in seen:
                raise ValueError(f"parameters {seen[env]!r} and {name!r} both map to {env}")
            seen[env] = name
        return value

    @model_validator(mode="after")
    def _grid_finite(self) -> TuningStudySpec:
        if self.algorithm.name == "grid":
            infinite = [k for k, p in self.search_space.items() if not p.finite]
            if infinite:
                raise ValueError(
                    f"searchSpace: algorithm grid needs a finite search space: give {infinite} a step"
                )
        return self


class TuningPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class TrialCounts(KubeModel):
    total: int = Field(default=0, description="Trials created.")
    running: int = Field(default=0, description="Trials not finished.")
    succeeded: int = Field(default=0, description="Trials that finished with a value.")
    failed: int = Field(default=0, description="Trials that failed.")
    pruned: int = Field(default=0, description="Trials stopped early by the pruner.")


class BestTrial(KubeModel):
    name: str = Field(description="The trial TrainingJob's name.")
    number: int | None = Field(default=None, description="The trial number.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Its parameters.", json_schema_extra=FREE_FORM
    )
    value: float | None = Field(default=None, description="Its objective value.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Its final metrics.")
    model: str | None = Field(default=None, description="URI of its model.onnx.")


class TuningStudyStatus(KubeModel):
    phase: TuningPhase = Field(default=TuningPhase.PENDING, description="Summary phase.")
    message: str = Field(default="", description="Why the study is in this phase.")
    observed_generation: int | None = Field(default=None, description="Generation observed.")
    conditions: list[Condition] = conditions_field()
    trials: TrialCounts = Field(default_factory=TrialCounts, description="Trials by state.")
    progress: str = Field(default="", description="Finished trials / maxTrials, for display.")
    best_trial: BestTrial | None = Field(default=None, description="The best trial so far.")
    start_time: str | None = Field(default=None, description="When the study started.")
    completion_time: str | None = Field(default=None, description="When the study finished.")


class TuningStudy(KubeModel):
    model_config = {**KubeModel.model_config, "extra": "ignore"}

    api_version: str = Field(default="kubeforge.io/v1alpha1", alias="apiVersion")
    kind: Literal["TuningStudy"] = "TuningStudy"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: TuningStudySpec
    status: TuningStudyStatus | None = None

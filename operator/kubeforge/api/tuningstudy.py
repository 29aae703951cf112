"""TuningStudy: search hyperparameters by running trials as TrainingJobs."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from kubeforge.api._base import DNS_1035_LABEL, KubeModel, cel, check_object_name, rule
from kubeforge.api._duration import DURATION, duration_seconds
from kubeforge.api._reserved import HYPERPARAMETER_NAME, hp_collision_rule, hp_env_name
from kubeforge.api._tuning_objective import Bound, Objective, ObjectiveEntry, Select
from kubeforge.api._tuning_settings import MULTI_OBJECTIVE_SAMPLERS, Algorithm, EarlyStopping
from kubeforge.api._tuning_space import _CEL_DIM_POINTS, MAX_GRID_POINTS, SearchParameter
from kubeforge.api._tuning_status import TuningStudyStatus
from kubeforge.api._tuning_warmstart import TUNINGSTUDY_NAME_MAX, WarmStart
from kubeforge.api.trainingjob import TrainingJobSpec

# The study's parts live in the private _tuning_* modules; these names stay importable from here
# (tests, benchmarks and the CRD generator import them as kubeforge.api.tuningstudy.NAME).
__all__ = [
    "TUNINGSTUDY_NAME_MAX",
    "Bound",
    "Budget",
    "Objective",
    "Promote",
    "SearchParameter",
    "TrialTemplate",
    "TuningStudy",
    "TuningStudySpec",
    "TuningStudyStatus",
    "duration_seconds",
]

class Budget(KubeModel):
    max_duration: str | None = Field(
        default=None,
        description="Stop suggesting trials once this long has passed since the study started "
        "(e.g. 30m, 2h, 1h30m); running trials finish. Raise it to continue a finished study.",
        pattern=DURATION,
        max_length=40,
    )

    def seconds(self) -> int | None:
        return None if self.max_duration is None else duration_seconds(self.max_duration)


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
    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        rule("has(self.modelDeployment) || has(self.select)",
             "promote needs modelDeployment, select or both"))}

    model_deployment: str | None = Field(
        default=None,
        description="A ModelDeployment pointed at the best trial's model once the study succeeds "
        "(created if absent).",
        pattern=DNS_1035_LABEL,  # a ModelDeployment's own name rule
        max_length=63,
    )
    select: Select | None = Field(
        default=None,
        description="How bestTrial is chosen: {maximize|minimize: METRIC, subjectTo: {METRIC: "
        "{max, min}}}. Default: the objective's best (with several objectives: the first "
        "objective's best on the Pareto front).",
    )

    @model_validator(mode="after")
    def _something(self) -> Promote:
        if self.model_deployment is None and self.select is None:
            raise ValueError("promote needs modelDeployment, select or both")
        return self


class TuningStudySpec(KubeModel):
    """The desired search."""

    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        rule(
            "self.algorithm.name != 'grid' || self.searchSpace.all(k, "
            "self.searchSpace[k].type != 'float' || has(self.searchSpace[k].step))",
            "algorithm grid needs a finite search space: give every float parameter a step",
            field_path=".searchSpace",
        ),
        rule(
            "self.algorithm.name != 'grid' || self.searchSpace.all(k, "
            + _CEL_DIM_POINTS.replace("p.", "self.searchSpace[k].")
            + f" <= {float(MAX_GRID_POINTS)})",
            f"algorithm grid: each dimension may have at most {MAX_GRID_POINTS:,} points",
            field_path=".searchSpace",
        ),
        rule("self.searchSpace == oldSelf.searchSpace",
             "spec.searchSpace is immutable: create a new study", field_path=".searchSpace"),
        rule("self.searchSpace.all(k, !has(self.searchSpace[k].target) || "
             "(has(self.trialTemplate.spec.model) && has(self.trialTemplate.spec.model.recipe)))",
             "searchSpace entries with a target need a trial template with model.recipe (the "
             "built-in trainer)", field_path=".searchSpace"),
        rule("has(self.objective) != has(self.objectives)",
             "set exactly one of spec.objective or spec.objectives"),
        rule("has(self.objective) == has(oldSelf.objective) && (!has(self.objective) || "
             "self.objective == oldSelf.objective)",
             "spec.objective is immutable: create a new study", field_path=".objective"),
        rule("has(self.objectives) == has(oldSelf.objectives) && (!has(self.objectives) || "
             "self.objectives == oldSelf.objectives)",
             "spec.objectives is immutable: create a new study", field_path=".objectives"),
        rule("!has(self.objectives) || self.algorithm.name != 'cmaes'",
             "algorithm cmaes optimises one objective: with spec.objectives use nsga2, tpe, "
             "random, qmc or grid", field_path=".algorithm.name"),
        rule("!has(self.objectives) || self.earlyStopping.name == 'none'",
             "earlyStopping needs one objective (Optuna prunes single-objective studies only)",
             field_path=".earlyStopping.name"),
        rule("self.algorithm == oldSelf.algorithm",
             "spec.algorithm is immutable: create a new study", field_path=".algorithm"),
        rule("has(self.warmStart) == has(oldSelf.warmStart) && (!has(self.warmStart) || "
             "self.warmStart == oldSelf.warmStart)",
             "spec.warmStart is immutable: create a new study", field_path=".warmStart"),
    )}

    objective: Objective | None = Field(
        default=None, description="The metric to optimise and how (or spec.objectives)."
    )
    objectives: list[ObjectiveEntry] | None = Field(
        default=None,
        description="Several metrics to optimise at once (a multi-objective study: Pareto "
        "front in status.paretoFront); in place of spec.objective.",
        min_length=2,
        max_length=4,
        json_schema_extra=cel(
            rule("self.all(o, self.filter(p, p.metric == o.metric).size() == 1)",
                 "objectives must name different metrics")),
    )
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
        default=3, ge=0, le=100000,
        description="Fail the study once this many trials failed (pruned is not failed).",
    )
    trial_template: TrialTemplate = Field(description="How each trial runs.")
    budget: Budget | None = Field(default=None, description="Limits besides maxTrials.")
    warm_start: WarmStart | None = Field(
        default=None, description="Earlier results that inform the sampler from the start."
    )
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
    def _objectives(self) -> TuningStudySpec:
        if (self.objective is None) == (self.objectives is None):
            raise ValueError("set exactly one of spec.objective or spec.objectives")
        if self.objectives is not None:
            names = [o.metric for o in self.objectives]
            if len(set(names)) != len(names):
                raise ValueError("objectives must name different metrics")
            if self.algorithm.name not in MULTI_OBJECTIVE_SAMPLERS:
                raise ValueError(
                    f"algorithm.name {self.algorithm.name} optimises one objective: with "
                    "spec.objectives use nsga2, tpe, random, qmc or grid"
                )
            if self.early_stopping.name != "none":
                raise ValueError(
                    "earlyStopping.name: earlyStopping needs one objective (Optuna prunes "
                    "single-objective studies only)"
                )
        return self

    @model_validator(mode="after")
    def _targets(self) -> TuningStudySpec:
        targets = [p.target for p in self.search_space.values() if p.target is not None]
        if len(set(targets)) != len(targets):
            raise ValueError("searchSpace: two entries target the same template field")
        model = self.trial_template.spec.model
        if targets and (model is None or model.recipe is None):
            raise ValueError(
                "searchSpace entries with a target need a trial template with model.recipe "
                "(the built-in trainer)"
            )
        return self

    @model_validator(mode="after")
    def _warm_trials(self) -> TuningStudySpec:
        metrics = {m for m, _ in self.objective_list}
        for i, warm in enumerate(self.warm_start.trials if self.warm_start else []):
            unknown = sorted(set(warm.params) - set(self.search_space))
            if unknown:
                raise ValueError(
                    f"warmStart.trials[{i}].params: {unknown} are not in searchSpace"
                )
            missing = sorted(set(self.search_space) - set(warm.params))
            if missing:
                raise ValueError(f"warmStart.trials[{i}].params: {missing} are missing")
            if set(warm.values) != metrics:
                raise ValueError(
                    f"warmStart.trials[{i}].values: needs exactly the objective metrics "
                    f"{sorted(metrics)}, not {sorted(warm.values)}"
                )
        return self

    @property
    def primary_objective(self) -> Objective:
        """The single objective, or the first of several (its metric is the one trials report
        as progress; it orders the Pareto front)."""
        if self.objective is not None:
            return self.objective
        assert self.objectives
        first = self.objectives[0]
        return Objective(metric=first.metric, direction=first.direction)

    @property
    def objective_list(self) -> list[tuple[str, Literal["minimize", "maximize"]]]:
        """(metric, direction) of every objective, in order."""
        if self.objectives is not None:
            return [(o.metric, o.direction) for o in self.objectives]
        assert self.objective is not None
        return [(self.objective.metric, self.objective.direction)]

    @property
    def multi_objective(self) -> bool:
        return self.objectives is not None

    @model_validator(mode="after")
    def _grid_finite(self) -> TuningStudySpec:
        if self.algorithm.name == "grid":
            infinite = [k for k, p in self.search_space.items() if not p.finite]
            if infinite:
                raise ValueError(
                    f"searchSpace: algorithm grid needs a finite search space: give {infinite} a step"
                )
            size = self.grid_size()
            if size is not None and size > MAX_GRID_POINTS:
                raise ValueError(
                    f"searchSpace: algorithm grid has {size:,} points; at most "
                    f"{MAX_GRID_POINTS:,} are allowed"
                )
        return self

    def grid_size(self) -> int | None:
        """Points of the grid (algorithm grid; the product of the dimensions' sizes), else
        None. Arithmetic: never lists the points."""
        if self.algorithm.name != "grid":
            return None
        n = 1
        for p in self.search_space.values():
            n *= p.grid_size()
        return n


class TuningStudy(KubeModel):
    model_config = {**KubeModel.model_config, "extra": "ignore"}

    api_version: str = Field(default="kubeforge.io/v1alpha1", alias="apiVersion")
    kind: Literal["TuningStudy"] = "TuningStudy"
    metadata: dict[str, Any] = Field(default_factory=dict)

    NAME_MAX: ClassVar[int] = TUNINGSTUDY_NAME_MAX

    @field_validator("metadata")
    @classmethod
    def _name(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        return check_object_name(metadata, cls.NAME_MAX)
    spec: TuningStudySpec
    status: TuningStudyStatus | None = None

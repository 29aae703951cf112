"""The observed state of a study: phase, trial counts, best trial, Pareto front, warm start."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from kubeforge.api._base import FREE_FORM, KubeModel
from kubeforge.api._conditions import Condition, conditions_field

MAX_PARETO_FRONT = 100
"""Points of status.paretoFront at most (the status must stay small); the rest are counted."""


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
    model_int8: str | None = Field(
        default=None, description="URI of its model.int8.onnx, when it wrote one."
    )
    variant: Literal["float", "int8"] | None = Field(
        default=None,
        description="Which of its models was chosen (and is promoted): int8 when its quantize "
        "mode was searched and is not none, or when its int8 metrics win promote.select.",
    )
    values: dict[str, float] = Field(
        default_factory=dict, description="Its objective values by metric (spec.objectives)."
    )


class ParetoPoint(KubeModel):
    name: str = Field(description="The trial TrainingJob's name.")
    number: int = Field(description="The trial number.")
    values: dict[str, float] = Field(description="Its objective values by metric.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Its parameters.", json_schema_extra=FREE_FORM
    )


class WarmSourceStatus(KubeModel):
    name: str = Field(description="The study named in spec.warmStart.fromStudies.")
    trials: int = Field(default=0, description="Its trials that entered this study.")
    skipped: int = Field(
        default=0, description="Its completed trials left out (outside searchSpace, no value)."
    )
    found: bool = Field(default=True, description="Whether the study exists.")


class WarmStartStatus(KubeModel):
    trials: int = Field(
        default=0,
        description="Earlier trials in the rebuilt study (kept constant once trials started: "
        "earlier trials that disappear later stay as placeholders, so the study rebuilds alike).",
    )
    from_studies: list[WarmSourceStatus] = Field(
        default_factory=list, description="What each study of fromStudies gave."
    )


class TuningStudyStatus(KubeModel):
    phase: TuningPhase = Field(default=TuningPhase.PENDING, description="Summary phase.")
    message: str = Field(default="", description="Why the study is in this phase.")
    observed_generation: int | None = Field(default=None, description="Generation observed.")
    conditions: list[Condition] = conditions_field()
    trials: TrialCounts = Field(default_factory=TrialCounts, description="Trials by state.")
    progress: str = Field(default="", description="Finished trials / maxTrials, for display.")
    best_trial: BestTrial | None = Field(default=None, description="The best trial so far.")
    pareto_front: list[ParetoPoint] | None = Field(
        default=None,
        description="The finished trials no other trial beats on every objective "
        f"(spec.objectives), ordered by the first objective; at most {MAX_PARETO_FRONT}.",
    )
    pareto_front_size: int | None = Field(
        default=None, description="Points on the Pareto front (paretoFront may list fewer)."
    )
    warm_start: WarmStartStatus | None = Field(
        default=None, description="The earlier trials spec.warmStart gave the sampler."
    )
    start_time: str | None = Field(default=None, description="When the study started.")
    completion_time: str | None = Field(default=None, description="When the study finished.")

"""What a study optimises (objective, objectives) and the rule that selects one trial."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kubeforge.api._base import KubeModel, cel, rule


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


class ObjectiveEntry(KubeModel):
    """One of several objectives (`objectives`): a metric and its direction."""

    metric: str = Field(
        description="A metric trials report, e.g. val_accuracy or onnx_latency_ms.",
        pattern=r"^[A-Za-z_][A-Za-z0-9_./-]*$",
    )
    direction: Literal["minimize", "maximize"] = Field(
        default="minimize", description="minimize or maximize."
    )


class Bound(KubeModel):
    """Bounds a trial's metric must keep to be selected."""

    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        rule("has(self.max) || has(self.min)", "a bound needs max, min or both"),
        rule("!has(self.max) || !has(self.min) || self.min <= self.max",
             "min must not exceed max"))}

    max: float | None = Field(default=None, description="The metric must be <= max.")
    min: float | None = Field(default=None, description="The metric must be >= min.")

    @model_validator(mode="after")
    def _some(self) -> Bound:
        if self.max is None and self.min is None:
            raise ValueError("a bound needs max, min or both")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError("min must not exceed max")
        return self

    def holds(self, value: float | None) -> bool:
        if value is None:
            return False
        return (self.max is None or value <= self.max) and (self.min is None or value >= self.min)


class Select(KubeModel):
    """The rule that picks one trial (bestTrial, and what promote serves): the best value of
    one metric among the finished trials that keep every bound of subjectTo."""

    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        rule("has(self.maximize) != has(self.minimize)",
             "select needs exactly one of maximize or minimize"))}

    maximize: str | None = Field(
        default=None, description="Pick the trial with the highest value of this metric.",
        pattern=r"^[A-Za-z_][A-Za-z0-9_./-]*$",
    )
    minimize: str | None = Field(
        default=None, description="Pick the trial with the lowest value of this metric.",
        pattern=r"^[A-Za-z_][A-Za-z0-9_./-]*$",
    )
    subject_to: dict[str, Bound] = Field(
        default_factory=dict,
        description="Bounds by metric, e.g. {onnx_latency_ms: {max: 0.5}}: a trial that breaks "
        "one (or lacks the metric) is not selected.",
        json_schema_extra={"maxProperties": 16},
    )

    @model_validator(mode="after")
    def _one(self) -> Select:
        if (self.maximize is None) == (self.minimize is None):
            raise ValueError("select needs exactly one of maximize or minimize")
        return self

    @property
    def metric(self) -> str:
        return str(self.maximize or self.minimize)

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        return "maximize" if self.maximize else "minimize"

"""The search space: one SearchParameter per dimension, and the grid arithmetic over it."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from kubeforge.api._base import FREE_FORM, KubeModel, cel, rule
from kubeforge.api._training_output import QUANTIZE_MODES
from kubeforge.api.trainingjob import RECIPES

MAX_GRID_POINTS = 100_000_000
"""Most points a grid study's search space may have (each dimension, and all together). The
grid is never materialised (points are counted and indexed arithmetically), so the bound is about
what a study can sensibly mean, not memory."""

TEMPLATE_TARGETS: dict[str, tuple[str, ...]] = {
    "model.recipe": RECIPES,
    "output.onnx.quantize.mode": ("none", *QUANTIZE_MODES),
}
"""Trial-template fields a search dimension may set (model selection), and their allowed
values; `none` for the quantize mode means no int8 model."""


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
        # `choices` holds values of any JSON type, which CEL cannot see, so no rule can look at
        # an item. But evaluating any rule over the whole parameter converts it, and a null item
        # fails that conversion (as it would fail the spec's immutability rules at every later
        # status write): this rule makes the null refused at admission, with its message.
        rule("self == self", "choices must be strings, numbers or booleans, never null"),
        rule("!has(self.target) || self.type == 'categorical'",
             "target needs type categorical", field_path=".target"),
    ), "x-kubeforge-any-of": [
        {"properties": {"type": {"enum": ["categorical"]}}, "required": ["choices"]},
        {"properties": {"type": {"enum": ["float", "int"]}}, "not": {"required": ["choices"]}},
    ]}}

    type: Literal["float", "int", "categorical"] = Field(description="float, int or categorical.")
    low: float | None = Field(
        default=None, ge=-1e18, le=1e18, description="Lower bound (float, int)."
    )
    high: float | None = Field(
        default=None, ge=-1e18, le=1e18, description="Upper bound, inclusive (float, int)."
    )
    log: bool = Field(default=False, description="Sample on a log scale.")
    step: float | None = Field(
        default=None, le=1e18, description="Discretisation step (on float: makes a finite grid)."
    )
    choices: list[Any] | None = Field(
        default=None,
        description="Choices of a categorical parameter: strings, numbers or booleans.",
        min_length=1,
        max_length=256,
        json_schema_extra={"items": FREE_FORM},
    )

    target: Literal["model.recipe", "output.onnx.quantize.mode"] | None = Field(
        default=None,
        description="Set this field of the trial template (model selection) instead of a "
        "hyperparameter: model.recipe (choices: recipes) or output.onnx.quantize.mode "
        "(choices: none, dynamic-int8, static-int8).",
    )

    @field_validator("choices")
    @classmethod
    def _scalar_choices(cls, value: list[Any] | None) -> list[Any] | None:
        if value is not None:
            for c in value:
                if not isinstance(c, str | int | float | bool):
                    raise ValueError(f"choices must be strings, numbers or booleans, not {c!r}")
            if len({repr(c) for c in value}) != len(value):
                raise ValueError("choices must be unique")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SearchParameter:
        if self.target is not None:
            if self.type != "categorical":
                raise ValueError("target needs type categorical")
            allowed = TEMPLATE_TARGETS[self.target]
            bad = [c for c in self.choices or [] if c not in allowed]
            if bad:
                raise ValueError(
                    f"choices of target {self.target} must be among {', '.join(allowed)}, "
                    f"not {bad}"
                )
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

    def grid_size(self) -> int:
        """Values of a finite dimension, counted (never listed)."""
        if self.type == "categorical":
            return len(self.choices or [])
        assert self.low is not None and self.high is not None
        if self.type == "int":
            return (int(self.high) - int(self.low)) // int(self.step or 1) + 1
        assert self.step is not None
        return math.floor((self.high - self.low) / self.step + 1e-9) + 1

    def grid_value(self, index: int) -> Any:
        """The `index`-th value of a finite dimension (0 ≤ index < grid_size())."""
        if self.type == "categorical":
            return (self.choices or [])[index]
        assert self.low is not None
        if self.type == "int":
            return int(self.low) + index * int(self.step or 1)
        assert self.step is not None
        return round(self.low + index * self.step, 12)


# CEL twin of SearchParameter.grid_size for the admission bound (doubles: an estimate exact
# enough to bound; the operator counts exactly). `choices` (of any JSON type) is invisible to CEL;
# it holds at most 256 anyway.
_CEL_DIM_POINTS = (
    "(p.type == 'categorical' ? 1.0 : "
    "(has(p.step) ? (p.high - p.low) / p.step + 1.0 : "
    "(p.type == 'int' ? p.high - p.low + 1.0 : 1.0)))"
)

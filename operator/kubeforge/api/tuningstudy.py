"""TuningStudy: search hyperparameters by running trials as TrainingJobs."""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from kubeforge.api._base import DNS_1035_LABEL, FREE_FORM, KubeModel, cel, check_object_name, rule
from kubeforge.api._conditions import Condition, conditions_field
from kubeforge.api._reserved import HYPERPARAMETER_NAME, hp_collision_rule, hp_env_name
from kubeforge.api.trainingjob import QUANTIZE_MODES, RECIPES, TrainingJobSpec

TUNINGSTUDY_NAME_MAX = 63
"""A study's name is the prefix of its trials' names (hashed to fit) and a label value."""

MAX_GRID_POINTS = 100_000_000
"""Most points a grid study's search space may have (each dimension, and all together). The
grid is never materialised (points are counted and indexed arithmetically), so the bound is about
what a study can sensibly mean, not memory."""

# Keyword arguments each Optuna sampler / pruner accepts through `settings` (Optuna 5), with
# the values Optuna accepts (its constructors raise on anything else, or fail later). `seed`
# comes from algorithm.seed; the pruners' warm-up from startStep.
_INT, _NUM, _BOOL, _STR = "integer", "number", "boolean", "string"
_KEYS: dict[str, dict[str, Any]] = {
    # samplers
    "consider_prior": {"type": _BOOL}, "consider_magic_clip": {"type": _BOOL},
    "consider_endpoints": {"type": _BOOL}, "multivariate": {"type": _BOOL},
    "group": {"type": _BOOL}, "warn_independent_sampling": {"type": _BOOL},
    "constant_liar": {"type": _BOOL}, "consider_pruned_trials": {"type": _BOOL},
    "use_separable_cma": {"type": _BOOL}, "with_margin": {"type": _BOOL},
    "lr_adapt": {"type": _BOOL}, "scramble": {"type": _BOOL},
    "warn_asynchronous_seeding": {"type": _BOOL},
    "prior_weight": {"type": _NUM, "exclusiveMinimum": 0, "maximum": 1e6},
    "n_startup_trials": {"type": _INT, "minimum": 0, "maximum": 100000},
    "n_ei_candidates": {"type": _INT, "minimum": 1, "maximum": 10000},
    "sigma0": {"type": _NUM, "exclusiveMinimum": 0, "maximum": 1e6},
    "restart_strategy": {"type": _STR, "enum": ["ipop", "bipop"]},
    "popsize": {"type": _INT, "minimum": 2, "maximum": 10000},
    "inc_popsize": {"type": _INT, "minimum": 1, "maximum": 100},
    "qmc_type": {"type": _STR, "enum": ["sobol", "halton"]},
    "population_size": {"type": _INT, "minimum": 2, "maximum": 10000},
    "mutation_prob": {"type": _NUM, "minimum": 0, "maximum": 1},
    "crossover_prob": {"type": _NUM, "minimum": 0, "maximum": 1},
    "swapping_prob": {"type": _NUM, "minimum": 0, "maximum": 1},
    # pruners
    "interval_steps": {"type": _INT, "minimum": 1, "maximum": 1000000},
    "n_min_trials": {"type": _INT, "minimum": 1, "maximum": 100000},
    "percentile": {"type": _NUM, "minimum": 0, "maximum": 100},
    "max_resource": {"type": _INT, "minimum": 1, "maximum": 1000000000},
    "reduction_factor": {"type": _INT, "minimum": 2, "maximum": 1000},
    "bootstrap_count": {"type": _INT, "minimum": 0, "maximum": 100000},
    "min_early_stopping_rate": {"type": _INT, "minimum": 0, "maximum": 100},
}
_SAMPLER_KEYS: dict[str, tuple[str, ...]] = {
    "random": (),
    "grid": (),
    "tpe": ("consider_prior", "prior_weight", "consider_magic_clip", "consider_endpoints",
            "n_startup_trials", "n_ei_candidates", "multivariate", "group",
            "warn_independent_sampling", "constant_liar"),
    "cmaes": ("sigma0", "n_startup_trials", "warn_independent_sampling", "consider_pruned_trials",
              "restart_strategy", "popsize", "inc_popsize", "use_separable_cma", "with_margin",
              "lr_adapt"),
    "qmc": ("qmc_type", "scramble", "warn_independent_sampling", "warn_asynchronous_seeding"),
    "nsga2": ("population_size", "mutation_prob", "crossover_prob", "swapping_prob"),
}
MULTI_OBJECTIVE_SAMPLERS = ("random", "grid", "tpe", "qmc", "nsga2")
"""Samplers Optuna runs with several objectives (CMA-ES optimises one)."""
MAX_PARETO_FRONT = 100
"""Points of status.paretoFront at most (the status must stay small); the rest are counted."""
_PRUNER_KEYS: dict[str, tuple[str, ...]] = {
    "none": (),
    "median": ("n_startup_trials", "interval_steps", "n_min_trials"),
    "percentile": ("percentile", "n_startup_trials", "interval_steps", "n_min_trials"),
    "hyperband": ("max_resource", "reduction_factor", "bootstrap_count"),
    "successive-halving": ("reduction_factor", "min_early_stopping_rate"),
}
SAMPLER_SETTINGS: dict[str, tuple[str, ...]] = dict(_SAMPLER_KEYS)
PRUNER_SETTINGS: dict[str, tuple[str, ...]] = dict(_PRUNER_KEYS)

# Combinations Optuna refuses (its constructors raise ValueError): (CEL, python check, message).
_SAMPLER_COMBINATIONS: list[tuple[str, Any, str]] = [
    ("!(has(self.settings.group) && self.settings.group) || "
     "(has(self.settings.multivariate) && self.settings.multivariate)",
     lambda s: not s.get("group") or bool(s.get("multivariate")),
     "settings.group needs settings.multivariate: true"),
    ("!(has(self.settings.with_margin) && self.settings.with_margin && "
     "has(self.settings.use_separable_cma) && self.settings.use_separable_cma)",
     lambda s: not (s.get("with_margin") and s.get("use_separable_cma")),
     "settings.with_margin and settings.use_separable_cma cannot both be true"),
    ("!(has(self.settings.lr_adapt) && self.settings.lr_adapt && "
     "((has(self.settings.with_margin) && self.settings.with_margin) || "
     "(has(self.settings.use_separable_cma) && self.settings.use_separable_cma)))",
     lambda s: not (s.get("lr_adapt") and (s.get("with_margin") or s.get("use_separable_cma"))),
     "settings.lr_adapt cannot be combined with with_margin or use_separable_cma"),
    ("!has(self.settings.restart_strategy) || !(has(self.settings.use_separable_cma) && "
     "self.settings.use_separable_cma || has(self.settings.with_margin) && "
     "self.settings.with_margin)",
     lambda s: "restart_strategy" not in s or not (s.get("use_separable_cma")
                                                     or s.get("with_margin")),
     "settings.restart_strategy cannot be combined with use_separable_cma or with_margin"),
]
_PRUNER_COMBINATIONS: list[tuple[str, Any, str]] = [
    ("!has(self.settings.bootstrap_count) || self.settings.bootstrap_count == 0 || "
     "has(self.settings.max_resource)",
     lambda s: not s.get("bootstrap_count") or "max_resource" in s,
     "settings.bootstrap_count > 0 needs settings.max_resource"),
    ("!has(self.settings.max_resource) || self.settings.max_resource >= self.startStep",
     None,  # checked in EarlyStopping (needs startStep)
     "settings.max_resource must not be below startStep"),
]


def _settings_schema(table: dict[str, tuple[str, ...]], what: str) -> dict[str, Any]:
    """The CRD schema of `settings`: every keyword any of them takes, typed and bounded (an
    unknown key is refused by the API server's field validation, naming it)."""
    props: dict[str, Any] = {}
    for name, keys in table.items():
        for key in keys:
            entry = props.setdefault(key, {**_KEYS[key], "used_by": []})
            entry["used_by"].append(name)
    for key, entry in props.items():
        entry["description"] = f"Optuna keyword argument `{key}` of {what} " + ", ".join(
            entry.pop("used_by")
        ) + "."
    return {"x-kubeforge-properties": props, "maxProperties": 16}


def _allow_list_rules(table: dict[str, tuple[str, ...]], what: str) -> list[dict[str, str]]:
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


def _check_value(key: str, value: Any) -> None:
    """One setting against its schema (type, bounds, enum), as the API server checks it."""
    schema = _KEYS[key]
    typ = schema["type"]
    ok = {
        _BOOL: isinstance(value, bool),
        _INT: isinstance(value, int) and not isinstance(value, bool),
        _NUM: isinstance(value, int | float) and not isinstance(value, bool),
        _STR: isinstance(value, str),
    }[typ]
    if not ok:
        raise ValueError(f"settings.{key} must be a {typ}, not {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise ValueError(f"settings.{key} must be one of {schema['enum']}, not {value!r}")
    if "minimum" in schema and value < schema["minimum"]:
        raise ValueError(f"settings.{key} must be at least {schema['minimum']}, not {value!r}")
    if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        raise ValueError(f"settings.{key} must be above {schema['exclusiveMinimum']}, not {value!r}")
    if "maximum" in schema and value > schema["maximum"]:
        raise ValueError(f"settings.{key} must be at most {schema['maximum']}, not {value!r}")


def _check_settings(table: dict[str, tuple[str, ...]], name: str, settings: dict[str, Any],
                    what: str, combinations: list[tuple[str, Any, str]]) -> None:
    unknown = sorted(set(settings) - set(table[name]))
    if unknown:
        raise ValueError(
            f"settings: {what} '{name}' does not accept {unknown}; it accepts only: "
            f"{', '.join(table[name]) or 'nothing'}"
        )
    for key, value in settings.items():
        _check_value(key, value)
    for _cel, check, message in combinations:
        if check is not None and not check(settings):
            raise ValueError(message)


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


class Algorithm(KubeModel):
    """The search algorithm: an Optuna sampler."""

    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        *_allow_list_rules(_SAMPLER_KEYS, "algorithm"),
        *(rule(c, m, field_path=".settings") for c, _, m in _SAMPLER_COMBINATIONS))}

    name: Literal["random", "grid", "tpe", "cmaes", "qmc", "nsga2"] = Field(
        default="tpe",
        description="random, grid, tpe, cmaes, qmc or nsga2 (Optuna samplers; with several "
        "objectives all but cmaes). Optuna's gp sampler is not offered: it needs torch, which "
        "the operator image does not carry.",
    )
    seed: int | None = Field(default=0, ge=0, le=4294967295, description="Sampler seed (same seed, same suggestions).")
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of the Optuna sampler, allow-listed per name.",
        json_schema_extra=_settings_schema(_SAMPLER_KEYS, "sampler"),
    )

    @model_validator(mode="after")
    def _allowed(self) -> Algorithm:
        _check_settings(SAMPLER_SETTINGS, self.name, self.settings, "algorithm",
                        _SAMPLER_COMBINATIONS)
        return self


class EarlyStopping(KubeModel):
    """Early stopping of bad trials: an Optuna pruner fed by the trials' intermediate reports."""

    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        *_allow_list_rules(_PRUNER_KEYS, "earlyStopping"),
        *(rule(c, m, field_path=".settings") for c, _, m in _PRUNER_COMBINATIONS))}

    name: Literal["none", "median", "percentile", "hyperband", "successive-halving"] = Field(
        default="none",
        description="none, median, percentile, hyperband or successive-halving (Optuna "
        "pruners; successive-halving is asynchronous successive halving, ASHA).",
    )
    start_step: int = Field(
        default=2, ge=0, le=1000000000,
        description="Never prune a trial before it reported this step."
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of the Optuna pruner, allow-listed per name.",
        json_schema_extra=_settings_schema(_PRUNER_KEYS, "pruner"),
    )

    @model_validator(mode="after")
    def _allowed(self) -> EarlyStopping:
        _check_settings(PRUNER_SETTINGS, self.name, self.settings, "earlyStopping",
                        _PRUNER_COMBINATIONS)
        max_resource = self.settings.get("max_resource")
        if max_resource is not None and max_resource < self.start_step:
            raise ValueError("settings.max_resource must not be below startStep")
        return self


DURATION = r"^([0-9]{1,9}(h|m|s))+$"
"""A duration the Go way, in whole hours, minutes and seconds: 90s, 30m, 1h30m."""


def duration_seconds(text: str) -> int:
    """Seconds of a DURATION string."""
    unit = {"h": 3600, "m": 60, "s": 1}
    return sum(int(n) * unit[u] for n, u in re.findall(r"([0-9]+)(h|m|s)", text))


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


MAX_WARM_TRIALS = 1000


class WarmTrial(KubeModel):
    """An earlier result: parameters and the objective values they gave."""

    params: dict[str, Any] = Field(
        description="Values of the search space's parameters (every one, within its range).",
        json_schema_extra={**FREE_FORM, "maxProperties": 32},
    )
    values: dict[str, float] = Field(
        description="The objective metric's value (every objective's, with spec.objectives), "
        "by metric.",
        json_schema_extra={"maxProperties": 4},
    )


MAX_WARM_STUDIES = 16


class WarmStart(KubeModel):
    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        rule("!has(self.fromStudies) || self.fromStudies.all(n, "
             "self.fromStudies.filter(m, m == n).size() == 1)",
             "fromStudies must name different studies", field_path=".fromStudies"))}

    trials: list[WarmTrial] = Field(
        default_factory=list,
        description="Earlier results the sampler starts from: they enter the rebuilt study as "
        "completed trials (they are not trials of this study: not counted, never bestTrial).",
        max_length=MAX_WARM_TRIALS,
    )
    from_studies: list[str] = Field(
        default_factory=list,
        description="TuningStudies in this namespace whose trials that had completed when this "
        "study was created enter the rebuilt study as completed trials, after `trials` "
        "(parameters not in this searchSpace are ignored; a trial outside its ranges or "
        "lacking an objective metric is skipped; the WarmStarted condition says what was used).",
        max_length=MAX_WARM_STUDIES,
        json_schema_extra={"items": {"type": "string", "pattern": DNS_1035_LABEL,
                                     "maxLength": TUNINGSTUDY_NAME_MAX}},
    )

    @field_validator("from_studies")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for i, name in enumerate(value):
            if len(name) > TUNINGSTUDY_NAME_MAX or not re.match(DNS_1035_LABEL, name):
                raise ValueError(f"fromStudies[{i}]: {name!r} is not a TuningStudy name")
        if len(set(value)) != len(value):
            raise ValueError("fromStudies must name different studies")
        return value


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

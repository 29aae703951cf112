"""The sampler (`algorithm`) and pruner (`earlyStopping`) of a study, and the Optuna keyword
arguments each accepts in `settings`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from kubeforge.api._base import KubeModel, cel, rule

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

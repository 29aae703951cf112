"""Model selection: search-space entries that set a field of the trial template (recipe,
quantize mode) instead of a hyperparameter."""

from __future__ import annotations

from typing import Any

import pytest
from kubeforge.api.trainingjob import TrainingJobSpec
from kubeforge.api.tuningstudy import TuningStudySpec
from kubeforge.tuningstudy import build as tb
from kubeforge.tuningstudy.search import SearchState
from pydantic import ValidationError

TEMPLATE = {
    "model": {"recipe": "mlp-classifier"},
    "dataset": {"uri": "builtin://digits"},
    "hyperparameters": {"epochs": 3},
    "output": {"onnx": {"quantize": {"mode": "static-int8", "calibration": {"samples": 64}}}},
}


def study(search_space: dict[str, Any], template: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "sel", "namespace": "ns", "uid": "u"},
        "spec": {
            "objectives": [
                {"metric": "val_accuracy", "direction": "maximize"},
                {"metric": "onnx_latency_ms"},
            ],
            "searchSpace": search_space,
            "algorithm": {"name": "random", "seed": 0},
            "trialTemplate": {"spec": template or TEMPLATE},
        },
    }


SPACE = {
    "recipe": {
        "type": "categorical",
        "choices": ["mlp-classifier", "cnn-classifier"],
        "target": "model.recipe",
    },
    "quant": {
        "type": "categorical",
        "choices": ["none", "dynamic-int8", "static-int8"],
        "target": "output.onnx.quantize.mode",
    },
    "hidden": {"type": "int", "low": 16, "high": 64},
}


@pytest.mark.parametrize(
    ("recipe", "quant", "expect_quantize"),
    [
        ("cnn-classifier", "none", None),
        ("mlp-classifier", "dynamic-int8", {"mode": "dynamic-int8"}),
        ("mlp-classifier", "static-int8", {"mode": "static-int8", "calibration": {"samples": 64}}),
    ],
)
def test_targets_land_in_the_trial_spec(
    recipe: str, quant: str, expect_quantize: dict[str, Any] | None
) -> None:
    s = study(SPACE)
    spec = TuningStudySpec.model_validate(s["spec"])
    m = tb.trial_manifest(s, spec, 0, {"recipe": recipe, "quant": quant, "hidden": 32})
    tspec = m["spec"]
    assert tspec["model"] == {"recipe": recipe}
    assert tspec["output"]["onnx"].get("quantize") == expect_quantize
    assert tspec["hyperparameters"] == {"epochs": 3, "hidden": 32}  # only real hyperparameters
    TrainingJobSpec.model_validate(tspec)  # a valid TrainingJob
    # the record keeps every parameter, so the sampler sees the model choice
    assert tb.trial_record(m, spec.primary_objective).params["recipe"] == recipe  # type: ignore[union-attr]


def test_suggestions_cover_the_model_choices() -> None:
    spec = TuningStudySpec.model_validate(study(SPACE)["spec"])
    state = SearchState(spec, [], "ns/sel")
    seen = {(p["recipe"], p["quant"]) for p in (state.suggest().params for _ in range(40))}
    assert {r for r, _ in seen} == {"mlp-classifier", "cnn-classifier"}
    assert {q for _, q in seen} == {"none", "dynamic-int8", "static-int8"}


@pytest.mark.parametrize(
    ("space", "template", "message"),
    [
        (
            {"r": {"type": "categorical", "choices": ["transformer"], "target": "model.recipe"}},
            None,
            "choices of target model.recipe must be among",
        ),
        (
            {"r": {"type": "float", "low": 0, "high": 1, "target": "model.recipe"}},
            None,
            "target needs type categorical",
        ),
        (
            {"r": {"type": "categorical", "choices": ["a"], "target": "spec.image"}},
            None,
            "target",
        ),
        (
            {"r": {"type": "categorical", "choices": ["mlp-classifier"], "target": "model.recipe"}},
            {"command": ["python3", "t.py"]},
            "need a trial template with model.recipe",
        ),
        (
            {
                "a": {
                    "type": "categorical",
                    "choices": ["none"],
                    "target": "output.onnx.quantize.mode",
                },
                "b": {
                    "type": "categorical",
                    "choices": ["none"],
                    "target": "output.onnx.quantize.mode",
                },
            },
            None,
            "two entries target the same template field",
        ),
    ],
    ids=["bad-recipe", "not-categorical", "path-not-allowed", "own-command", "same-target"],
)
def test_refused(space: dict[str, Any], template: dict[str, Any] | None, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TuningStudySpec.model_validate(study(space, template)["spec"])

"""Promotion chooses the int8 model by itself: when the chosen trial's searched quantize mode is
int8 (the trial stands for its int8 model), or when its int8 figures win promote.select."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubeforge.api.tuningstudy import TuningStudySpec
from kubeforge.tuningstudy import build as tb
from kubeforge.tuningstudy.status import decide

NOW = "2030-01-01T00:00:00Z"
TEMPLATE = {
    "model": {"recipe": "mlp-classifier"},
    "dataset": {"uri": "builtin://digits"},
    "output": {"onnx": {"quantize": {"mode": "dynamic-int8"}}},
}
SEARCHED_QUANT = {
    "quant": {
        "type": "categorical",
        "choices": ["none", "dynamic-int8"],
        "target": "output.onnx.quantize.mode",
    },
    "hidden": {"type": "int", "low": 16, "high": 64},
}


def study(space: dict[str, Any], select: dict[str, Any] | None, max_trials: int) -> dict[str, Any]:
    promote: dict[str, Any] = {"modelDeployment": "digits"}
    if select is not None:
        promote["select"] = select
    return {
        "metadata": {"name": "q", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {
            "objectives": [
                {"metric": "val_accuracy", "direction": "maximize"},
                {"metric": "onnx_latency_ms"},
            ],
            "searchSpace": space,
            "algorithm": {"name": "random", "seed": 0},
            "maxTrials": max_trials,
            "parallelism": max_trials,
            "trialTemplate": {"spec": TEMPLATE},
            "promote": promote,
        },
        "status": {},
    }


def finished(
    number: int, params: dict[str, Any], float_m: tuple[float, float], int8: tuple[float, float]
) -> dict[str, Any]:
    """A succeeded trial: float (accuracy, latency), int8 (accuracy, latency) and both files."""
    base = f"s3://b/q-trial-{number}"
    return {
        "metadata": {
            "name": tb.trial_name("q", number),
            "labels": {tb.STUDY_LABEL: "q", tb.NUMBER_LABEL: str(number)},
            "annotations": {tb.PARAMS: json.dumps(params)},
            "ownerReferences": [{"kind": "TuningStudy", "name": "q", "uid": "u",
                                 "controller": True}],
        },
        "status": {
            "phase": "Succeeded",
            "metrics": {
                "val_accuracy": float_m[0], "onnx_latency_ms": float_m[1],
                "int8_val_accuracy": int8[0], "int8_onnx_latency_ms": int8[1],
                "int8_val_accuracy_delta": int8[0] - float_m[0],
            },
            "artifacts": {"model": f"{base}/model.onnx", "modelInt8": f"{base}/model.int8.onnx"},
        },
    }


def run(obj: dict[str, Any], trials: list[dict[str, Any]]) -> dict[str, Any]:
    d = decide(obj, TuningStudySpec.model_validate(obj["spec"]), trials, NOW)
    assert d.status["phase"] == "Succeeded", d.status["message"]
    return {"best": d.status["bestTrial"], "front": d.status.get("paretoFront"),
            "promote": d.promote}


def test_searched_int8_trial_is_valued_and_promoted_as_int8() -> None:
    """Trial 1 chose dynamic-int8: its values are its int8 figures (faster), it keeps the
    latency bound, and the promoted ModelDeployment serves model.int8.onnx."""
    obj = study(SEARCHED_QUANT, {"maximize": "val_accuracy",
                                 "subjectTo": {"onnx_latency_ms": {"max": 0.3}}}, 2)
    trials = [
        # quant none: its int8 file (a template default) is not what it stands for
        finished(0, {"quant": "none", "hidden": 64}, (0.97, 0.5), (0.97, 0.2)),
        finished(1, {"quant": "dynamic-int8", "hidden": 32}, (0.95, 0.5), (0.951, 0.25)),
    ]
    out = run(obj, trials)
    best = out["best"]
    assert (best["number"], best["variant"]) == (1, "int8")
    assert best["value"] == 0.951 and best["values"] == {
        "val_accuracy": 0.951, "onnx_latency_ms": 0.25}
    assert best["model"] == "s3://b/q-trial-1/model.onnx"
    assert best["modelInt8"] == "s3://b/q-trial-1/model.int8.onnx"
    assert out["promote"]["spec"] == {"model": {"uri": "s3://b/q-trial-1/model.int8.onnx"}}
    # the front is judged on what each trial stands for: trial 0 float (0.97, 0.5), trial 1
    # int8 (0.951, 0.25): neither dominates
    assert {p["number"]: p["values"]["onnx_latency_ms"] for p in out["front"]} == {0: 0.5, 1: 0.25}


@pytest.mark.parametrize(
    ("int8", "variant"),
    [
        ((0.96, 0.2), "int8"),   # int8 is faster at the same bound: it wins the rule
        ((0.96, 0.6), "float"),  # int8 is slower (a tiny model's quantize overhead): float
        ((0.96, 0.4), "float"),  # a tie keeps the float model
    ],
)
def test_int8_wins_the_rule_by_its_own_figures(int8: tuple[float, float], variant: str) -> None:
    """Quantize fixed by the template (not searched): each trial offers both models; the rule
    (minimize latency with accuracy >= 0.95) picks the model, not only the trial."""
    space = {"hidden": {"type": "int", "low": 16, "high": 64}}
    obj = study(space, {"minimize": "onnx_latency_ms",
                        "subjectTo": {"val_accuracy": {"min": 0.95}}}, 2)
    trials = [
        finished(0, {"hidden": 32}, (0.96, 0.4), int8),
        finished(1, {"hidden": 16}, (0.90, 0.1), (0.90, 0.05)),  # fails the accuracy bound
    ]
    best = run(obj, trials)["best"]
    assert (best["number"], best["variant"]) == (0, variant)
    expect = "model.int8.onnx" if variant == "int8" else "model.onnx"
    assert run(obj, trials)["promote"]["spec"]["model"]["uri"] == f"s3://b/q-trial-0/{expect}"


def test_int8_that_breaks_a_bound_its_float_keeps_is_not_chosen() -> None:
    """The bounds hold on the chosen model's own figures: int8 lost 2 points of accuracy."""
    space = {"hidden": {"type": "int", "low": 16, "high": 64}}
    obj = study(space, {"minimize": "onnx_latency_ms",
                        "subjectTo": {"val_accuracy": {"min": 0.95}}}, 1)
    best = run(obj, [finished(0, {"hidden": 32}, (0.96, 0.4), (0.94, 0.1))])["best"]
    assert best["variant"] == "float" and best["value"] == 0.4


def test_a_trial_without_an_int8_model_has_no_variant() -> None:
    space = {"hidden": {"type": "int", "low": 16, "high": 64}}
    obj = study(space, None, 1)
    t = finished(0, {"hidden": 32}, (0.96, 0.4), (0.96, 0.1))
    del t["status"]["artifacts"]["modelInt8"]
    out = run(obj, [t])
    assert "variant" not in out["best"]
    assert out["promote"]["spec"]["model"]["uri"] == "s3://b/q-trial-0/model.onnx"


def test_metrics_as_the_int8_models() -> None:
    assert tb.int8_metrics(
        {"val_accuracy": 0.9, "int8_val_accuracy": 0.91, "int8_val_accuracy_delta": 0.01,
         "train_seconds": 3.0}
    ) == {"val_accuracy": 0.91, "train_seconds": 3.0}

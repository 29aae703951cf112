"""Model source resolution (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from kubeforge.api.modeldeployment import ModelSource
from kubeforge.modeldeployment.resolve import (
    UNSUPPORTED,
    WAITING,
    deployed_model_uri,
    non_onnx,
    resolve,
    source_ref,
)


def src(**kw: Any) -> ModelSource:
    return ModelSource.model_validate(kw)


def tj(phase: str, artifacts: dict[str, Any] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if artifacts is not None:
        status["artifacts"] = artifacts
    return {"kind": "TrainingJob", "metadata": {"name": "train"}, "status": status}


def test_plain_uri() -> None:
    r = resolve(src(uri="gs://b/m/model.onnx"))
    assert r.ok and r.uri == "gs://b/m/model.onnx" and r.sha256 is None
    assert source_ref(src(uri="gs://b/m/")) is None


def test_training_job_artifact() -> None:
    s = src(fromTrainingJob="train")
    assert source_ref(s) == ("kubeforge.io/v1alpha1", "TrainingJob", "train")
    r = resolve(s, tj("Succeeded", {"model": "pvc://art/ml/train/model.onnx", "sha256": "ab"}))
    assert r.ok and r.uri == "pvc://art/ml/train/model.onnx" and r.sha256 == "ab"


@pytest.mark.parametrize(
    "obj,needle",
    [
        (None, "does not exist"),
        (tj("Running"), "to produce a model (phase Running)"),
        (tj("Succeeded", {"metrics": 1}), "without a model"),
        (tj("Failed"), "failed"),
    ],
)
def test_training_job_waiting(obj: dict[str, Any] | None, needle: str) -> None:
    r = resolve(src(fromTrainingJob="train"), obj)
    assert not r.ok and r.reason == WAITING and needle in r.message


def test_tuning_study_best_trial() -> None:
    s = src(fromTuningStudy="study")
    study = {"status": {"phase": "Running", "bestTrial": {"name": "study-7", "model": "s3://b/7/"}}}
    trial = {"status": {"artifacts": {"model": "s3://b/7/", "sha256": "cd"}}}
    r = resolve(s, study, trial)
    assert r.ok and r.uri == "s3://b/7/" and r.sha256 == "cd"
    assert resolve(s, study).sha256 is None
    waiting = resolve(s, {"status": {"phase": "Running"}})
    assert not waiting.ok and waiting.reason == WAITING and "best trial" in waiting.message


@pytest.mark.parametrize(
    "uri,exporter",
    [
        ("s3://b/m/model.pt", "torch.onnx.export"),
        ("file:///m/weights.pth", "torch.onnx.export"),
        ("pvc://c/m/model.safetensors", "optimum-cli"),
        ("pvc://c/m/pytorch_model.bin", "torch.onnx.export"),
        ("gs://b/clf.pkl", "skl2onnx"),
        ("gs://b/clf.joblib", "skl2onnx"),
        ("s3://b/m.h5", "tf2onnx"),
        ("s3://b/m.keras", "tf2onnx"),
        ("s3://b/export/saved_model/", "tf2onnx"),
        ("s3://b/export/saved_model.pb", "tf2onnx"),
    ],
)
def test_non_onnx_names_the_exporter(uri: str, exporter: str) -> None:
    r = resolve(src(uri=uri))
    assert not r.ok and r.reason == UNSUPPORTED
    assert exporter in r.message and uri in r.message and "ONNX" in r.message


@pytest.mark.parametrize(
    "uri", ["s3://b/m/", "s3://b/m/model.onnx", "pvc://c/models/v1", "hf://org/repo"]
)
def test_onnx_like_uris_pass(uri: str) -> None:
    assert non_onnx(uri) is None


def test_non_onnx_artifact_of_a_training_job() -> None:
    r = resolve(src(fromTrainingJob="t"), tj("Succeeded", {"model": "s3://b/model.pt"}))
    assert r.reason == UNSUPPORTED and "torch.onnx.export" in r.message


def test_deployed_model_uri() -> None:
    dep = {"spec": {"template": {"spec": {"containers": [{"args": ["--model", "s3://x/"]}]}}}}
    assert deployed_model_uri(dep) == "s3://x/"
    assert deployed_model_uri(None) is None
    assert deployed_model_uri({"spec": {}}) is None


def test_int8_variant_of_a_training_job() -> None:
    arts = {
        "model": "pvc://art/ml/train/model.onnx",
        "sha256": "f1",
        "modelInt8": "pvc://art/ml/train/model.int8.onnx",
        "sha256Int8": "i8",
    }
    r = resolve(src(fromTrainingJob="train", variant="int8"), tj("Succeeded", arts))
    assert r.ok and r.uri == arts["modelInt8"] and r.sha256 == "i8"
    # float stays the default
    r = resolve(src(fromTrainingJob="train"), tj("Succeeded", arts))
    assert r.uri == arts["model"] and r.sha256 == "f1"


def test_int8_variant_waits_for_a_quantized_model() -> None:
    only_float = {"model": "pvc://art/ml/train/model.onnx"}
    r = resolve(src(fromTrainingJob="train", variant="int8"), tj("Succeeded", only_float))
    assert not r.ok and r.reason == WAITING
    assert "no int8 model" in r.message and "spec.output.onnx.quantize" in r.message
    r = resolve(src(fromTrainingJob="train", variant="int8"), tj("Running"))
    assert r.reason == WAITING and "int8 model (phase Running)" in r.message


def test_int8_variant_of_a_study_uses_the_best_trials_job() -> None:
    study = {"status": {"phase": "Succeeded", "bestTrial": {"name": "s-3", "model": "s3://m/f"}}}
    trial = {
        "metadata": {"name": "s-3"},
        "status": {"artifacts": {"model": "s3://m/f", "modelInt8": "s3://m/i8", "sha256Int8": "x"}},
    }
    r = resolve(src(fromTuningStudy="s", variant="int8"), study, trial)
    assert r.ok and r.uri == "s3://m/i8" and r.sha256 == "x"
    r = resolve(src(fromTuningStudy="s", variant="int8"), study, None)
    assert r.reason == WAITING and "best trial with an int8 model" in r.message


def test_int8_variant_refused_with_a_uri() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="variant int8 needs fromTrainingJob"):
        src(uri="s3://b/m/model.onnx", variant="int8")
    with pytest.raises(ValidationError, match="variant"):
        src(fromTrainingJob="t", variant="fp16")

"""The job document: load (YAML/JSON, file or env), validate, and resolve into trainer settings.

Validation is the shared pydantic model (``kubeforge.api.TrainingJob``) when it is importable,
plus the trainer's own checks of the built-in hyperparameters. Every error names the field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

RECIPES = ("mlp-classifier", "mlp-regressor", "cnn-classifier")
OPTIMIZERS = ("adam", "adamw", "sgd")
QUANTIZE_MODES = ("dynamic-int8", "static-int8")
DATASET_SCHEMES = ("builtin", "file", "pvc", "s3", "gs", "az", "abfs", "hf", "http", "https")
OUTPUT_SCHEMES = ("file", "pvc", "s3", "gs", "az", "abfs", "memory")
DEFAULT_SCRIPT_DIR = "/kubeforge/script"


class ConfigError(ValueError):
    """A bad job document (exit code 2). ``field`` is the dotted path of the culprit."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}" if field_path else message)
        self.field = field_path


@dataclass
class TrainerConfig:
    name: str
    namespace: str
    recipe: str | None
    script_path: str | None
    dataset_uri: str
    hparams: dict[str, Any]
    output_uri: str
    onnx_opset: int = 17
    onnx_dynamic_batch: bool = True
    quantize_mode: str | None = None  # spec.output.onnx.quantize.mode
    calibration_samples: int = 256
    checkpoint_every: int = 1
    resume: bool = True
    # Resolved built-in hyperparameters
    lr: float = 1e-3
    epochs: int = 10
    batch_size: int = 64
    hidden: list[int] = field(default_factory=lambda: [128, 64])
    dropout: float = 0.0
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    seed: int = 0
    val_fraction: float = 0.2
    target: str | None = None
    channels: list[int] = field(default_factory=lambda: [16, 32])
    image_shape: list[int] | None = None
    onnx_tolerance: float = 1e-3
    device: str = "auto"


def load_document(path: str | None, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The TrainingJob document from ``--job FILE`` or the env var ``KUBEFORGE_JOB``."""
    env = os.environ if env is None else env
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigError("--job", f"cannot read {path}: {exc.strerror}") from exc
        source = path
    else:
        text = env.get("KUBEFORGE_JOB", "")
        source = "KUBEFORGE_JOB"
        if not text.strip():
            raise ConfigError("", "no job document: pass --job FILE or set KUBEFORGE_JOB")
        if not text.lstrip().startswith(("{", "apiVersion", "kind", "metadata", "spec")) and (
            os.path.isfile(text.strip())
        ):
            return load_document(text.strip(), env)
    try:
        doc = json.loads(text)
    except ValueError:
        try:
            import yaml

            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except Exception as exc:
            raise ConfigError("", f"{source} is neither JSON nor YAML: {exc}") from exc
        docs = [
            d for d in docs if isinstance(d, dict) and d.get("kind", "TrainingJob") == "TrainingJob"
        ]
        if not docs:
            raise ConfigError("kind", f"{source} holds no TrainingJob document") from None
        doc = docs[0]
    if not isinstance(doc, dict):
        raise ConfigError("", f"{source} must hold a TrainingJob object")
    return doc


def _shared_validate(doc: dict[str, Any]) -> None:
    """Validate with the operator's pydantic model when it is installed."""
    try:
        from kubeforge.api import TrainingJob
    except Exception:  # not installed / not written yet: the local checks below still run
        return
    try:
        from pydantic import ValidationError
    except Exception:
        return
    try:
        TrainingJob.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("function-after",))
        raise ConfigError(loc, str(err.get("msg", "invalid"))) from exc


def _num(
    hp: Mapping[str, Any],
    key: str,
    default: float,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    value = hp.get(key, default)
    try:
        if isinstance(value, bool):
            raise TypeError
        num = float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"spec.hyperparameters.{key}", f"must be a number, not {value!r}"
        ) from None
    if lo is not None and (num < lo or (lo_open and num == lo)):
        raise ConfigError(
            f"spec.hyperparameters.{key}", f"must be {'>' if lo_open else '>='} {lo}, not {value!r}"
        )
    if hi is not None and (num > hi or (hi_open and num == hi)):
        raise ConfigError(
            f"spec.hyperparameters.{key}", f"must be {'<' if hi_open else '<='} {hi}, not {value!r}"
        )
    return num


def _int(hp: Mapping[str, Any], key: str, default: int, *, lo: int | None = None) -> int:
    num = _num(hp, key, default, lo=lo)
    if not float(num).is_integer():
        raise ConfigError(f"spec.hyperparameters.{key}", f"must be an integer, not {hp.get(key)!r}")
    return int(num)


def _int_list(hp: Mapping[str, Any], key: str, default: list[int]) -> list[int]:
    value = hp.get(key, default)
    if isinstance(value, str):
        text = value.strip()
        try:
            value = (
                json.loads(text)
                if text.startswith("[")
                else [int(v) for v in text.replace(",", " ").split()]
            )
        except ValueError:
            raise ConfigError(
                f"spec.hyperparameters.{key}",
                f"must be an integer or a list of integers, not {value!r}",
            ) from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() and v >= 1
        for v in value
    ):
        raise ConfigError(
            f"spec.hyperparameters.{key}",
            f"must be a positive integer or a list of them, not {value!r}",
        )
    return [int(v) for v in value]


def _local_validate(doc: Mapping[str, Any]) -> None:
    if doc.get("kind", "TrainingJob") != "TrainingJob":
        raise ConfigError("kind", f"must be TrainingJob, not {doc.get('kind')!r}")
    api = doc.get("apiVersion", "kubeforge.io/v1alpha1")
    if api != "kubeforge.io/v1alpha1":
        raise ConfigError("apiVersion", f"must be kubeforge.io/v1alpha1, not {api!r}")
    meta = doc.get("metadata", {})
    if not isinstance(meta, dict):
        raise ConfigError("metadata", "must be an object")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        raise ConfigError("spec", "is required and must be an object")
    model = spec.get("model")
    if not isinstance(model, dict):
        raise ConfigError(
            "spec.model",
            "is required for the built-in trainer: {recipe: NAME} or {script: {path: P}}",
        )
    if ("recipe" in model) == ("script" in model):
        raise ConfigError("spec.model", "needs exactly one of recipe or script")
    if "recipe" in model and model["recipe"] not in RECIPES:
        raise ConfigError(
            "spec.model.recipe", f"must be one of {', '.join(RECIPES)}, not {model['recipe']!r}"
        )
    if "script" in model:
        script = model["script"]
        if not isinstance(script, dict) or (
            bool(script.get("path")) == bool(script.get("configMap"))
        ):
            raise ConfigError("spec.model.script", "needs either path or configMap (with key)")
        if script.get("configMap") and not script.get("key"):
            raise ConfigError("spec.model.script.key", "is required with configMap")
    if "recipe" in model:
        ds = spec.get("dataset")
        if not isinstance(ds, dict) or not isinstance(ds.get("uri"), str) or not ds["uri"]:
            raise ConfigError("spec.dataset.uri", "is required for a built-in recipe")
        scheme = ds["uri"].split("://", 1)[0] if "://" in ds["uri"] else ""
        if scheme not in DATASET_SCHEMES:
            raise ConfigError(
                "spec.dataset.uri",
                f"scheme must be one of {', '.join(DATASET_SCHEMES)}, not {ds['uri']!r}",
            )
    hp = spec.get("hyperparameters", {})
    if not isinstance(hp, dict):
        raise ConfigError("spec.hyperparameters", "must be an object")
    out = spec.get("output", {}) or {}
    if not isinstance(out, dict):
        raise ConfigError("spec.output", "must be an object")
    onnx = out.get("onnx", {}) or {}
    opset = onnx.get("opset", 17)
    if not isinstance(opset, int) or isinstance(opset, bool) or not 7 <= opset <= 23:
        raise ConfigError(
            "spec.output.onnx.opset", f"must be an integer from 7 to 23, not {opset!r}"
        )
    quant = onnx.get("quantize")
    if quant is not None:
        if not isinstance(quant, dict) or quant.get("mode") not in QUANTIZE_MODES:
            raise ConfigError(
                "spec.output.onnx.quantize.mode",
                f"must be one of {', '.join(QUANTIZE_MODES)}, not {(quant or {}).get('mode')!r}"
                if isinstance(quant, dict)
                else "spec.output.onnx.quantize must be an object",
            )
        if "recipe" not in model:
            raise ConfigError(
                "spec.output.onnx.quantize", "needs a built-in recipe (spec.model.recipe)"
            )
        samples = (quant.get("calibration") or {}).get("samples", 256)
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise ConfigError(
                "spec.output.onnx.quantize.calibration.samples",
                f"must be an integer >= 1, not {samples!r}",
            )
    ck = spec.get("checkpoint", {}) or {}
    every = ck.get("everyEpochs", 1)
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
        raise ConfigError("spec.checkpoint.everyEpochs", f"must be an integer >= 0, not {every!r}")


def resolve(doc: dict[str, Any], env: Mapping[str, str] | None = None) -> TrainerConfig:
    """Validate the document and build the trainer's settings (raises :class:`ConfigError`)."""
    env = os.environ if env is None else env
    _local_validate(doc)
    _shared_validate(doc)
    meta = doc.get("metadata") or {}
    spec = doc["spec"]
    model = spec["model"]
    hp = dict(spec.get("hyperparameters") or {})
    name = str(meta.get("name") or "trainingjob")
    out = spec.get("output") or {}
    onnx = out.get("onnx") or {}
    ck = spec.get("checkpoint") or {}
    output_uri = (
        env.get("KUBEFORGE_OUTPUT_URI") or out.get("uri") or f"file://./kubeforge-output/{name}"
    )

    script_path = None
    if "script" in model:
        script = model["script"]
        script_path = (
            script.get("path")
            or env.get("KUBEFORGE_SCRIPT_PATH")
            or os.path.join(DEFAULT_SCRIPT_DIR, str(script.get("key")))
        )
    optimizer = str(hp.get("optimizer", "adam")).lower()
    if optimizer not in OPTIMIZERS:
        raise ConfigError(
            "spec.hyperparameters.optimizer",
            f"must be one of {', '.join(OPTIMIZERS)}, not {hp['optimizer']!r}",
        )
    image_shape = _int_list(hp, "image_shape", [1]) if "image_shape" in hp else None
    target = hp.get("target")
    if target is not None and not isinstance(target, (str, int)):
        raise ConfigError("spec.hyperparameters.target", f"must be a column name, not {target!r}")
    device = str(hp.get("device", "auto")).lower()
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(
            "spec.hyperparameters.device", f"must be auto, cpu or cuda, not {device!r}"
        )
    return TrainerConfig(
        name=name,
        namespace=str(meta.get("namespace") or env.get("KUBEFORGE_POD_NAMESPACE") or "default"),
        recipe=model.get("recipe"),
        script_path=script_path,
        dataset_uri=str((spec.get("dataset") or {}).get("uri", "")),
        hparams=hp,
        output_uri=str(output_uri),
        onnx_opset=int(onnx.get("opset", 17)),
        onnx_dynamic_batch=bool(onnx.get("dynamicBatch", True)),
        quantize_mode=(onnx.get("quantize") or {}).get("mode"),
        calibration_samples=int(
            ((onnx.get("quantize") or {}).get("calibration") or {}).get("samples", 256)
        ),
        checkpoint_every=int(ck.get("everyEpochs", 1)),
        resume=bool(ck.get("resume", True)),
        lr=_num(hp, "lr", 1e-3, lo=0, lo_open=True, hi=10),
        epochs=_int(hp, "epochs", 10, lo=1),
        batch_size=_int(hp, "batch_size", 64, lo=1),
        hidden=_int_list(hp, "hidden", [128, 64]),
        dropout=_num(hp, "dropout", 0.0, lo=0, hi=1, hi_open=True),
        optimizer=optimizer,
        weight_decay=_num(hp, "weight_decay", 0.0, lo=0),
        momentum=_num(hp, "momentum", 0.9, lo=0, hi=1),
        seed=_int(hp, "seed", 0, lo=0),
        val_fraction=_num(hp, "val_fraction", 0.2, lo=0, hi=1, lo_open=True, hi_open=True),
        target=None if target is None else str(target),
        channels=_int_list(hp, "channels", [16, 32]),
        image_shape=image_shape,
        onnx_tolerance=_num(hp, "onnx_tolerance", 1e-3, lo=0, lo_open=True),
        device=device,
    )

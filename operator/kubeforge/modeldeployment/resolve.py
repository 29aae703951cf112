"""`spec.model` → the URI to serve (pure: the handler fetches the referenced object).

- `uri`: served as written.
- `fromTrainingJob: NAME`: that TrainingJob's `status.artifacts.model` (+ its sha256).
- `fromTuningStudy: NAME`: that study's `status.bestTrial.model` (+ the sha256 recorded on the
  best trial's TrainingJob, when the handler passes it).

`variant: int8` serves the quantized model instead (`artifacts.modelInt8` of the TrainingJob, or
of the best trial's TrainingJob); a job that wrote none keeps the ModelDeployment waiting with a
message naming `spec.output.onnx.quantize`.

Until the artefact exists the ModelDeployment waits with `ModelLoaded=False`, reason
`WaitingForModel`, and a message saying what it waits for. Only ONNX is served: an artefact that
is plainly another format gets `ModelLoaded=False`, reason `UnsupportedModelFormat`, and a message
naming the exporter to use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubeforge.api.modeldeployment import ModelSource

JSON = dict[str, Any]

WAITING = "WaitingForModel"
UNSUPPORTED = "UnsupportedModelFormat"

TRAININGJOB = ("kubeforge.io/v1alpha1", "TrainingJob")
TUNINGSTUDY = ("kubeforge.io/v1alpha1", "TuningStudy")

_TORCH = "PyTorch", "torch.onnx.export (or torch.onnx.export(..., dynamo=True))"
_HF = (
    "a PyTorch / Hugging Face weights file",
    ("torch.onnx.export, or `optimum-cli export onnx` for Hugging Face models"),
)
_SKLEARN = "a pickled scikit-learn / joblib model", "skl2onnx (convert_sklearn / to_onnx)"
_KERAS = "a TensorFlow / Keras model", "tf2onnx (python -m tf2onnx.convert)"

NON_ONNX_SUFFIXES: dict[str, tuple[str, str]] = {
    ".pt": _TORCH,
    ".pth": _TORCH,
    ".ckpt": _TORCH,
    ".safetensors": _HF,
    ".bin": _HF,
    ".pkl": _SKLEARN,
    ".pickle": _SKLEARN,
    ".joblib": _SKLEARN,
    ".h5": _KERAS,
    ".hdf5": _KERAS,
    ".keras": _KERAS,
}


@dataclass(frozen=True)
class Resolved:
    """The outcome: a URI to serve, or why there is none (reason + message)."""

    uri: str | None = None
    sha256: str | None = None
    reason: str = ""
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.uri is not None


def source_ref(source: ModelSource) -> tuple[str, str, str] | None:
    """(apiVersion, kind, name) of the object the model comes from, or None for a plain URI."""
    if source.from_training_job is not None:
        return (*TRAININGJOB, source.from_training_job)
    if source.from_tuning_study is not None:
        return (*TUNINGSTUDY, source.from_tuning_study)
    return None


def non_onnx(uri: str) -> str | None:
    """A message when `uri` plainly names a non-ONNX artefact (None: looks servable)."""
    path = uri.split("?", 1)[0].rstrip("/")
    last = path.rsplit("/", 1)[-1].lower()
    if "saved_model" in path.lower().split("/") or last == "saved_model.pb":
        what, exporter = _KERAS[0] + " (SavedModel)", _KERAS[1]
    else:
        dot = last.rfind(".")
        found = NON_ONNX_SUFFIXES.get(last[dot:]) if dot > 0 else None
        if found is None:
            return None
        what, exporter = found
    return (
        f"{uri} is {what}, not ONNX: kubeforge serves ONNX only. Export the model with "
        f"{exporter} and point spec.model at the .onnx file (or a folder holding model.onnx)."
    )


def _check(uri: str, sha256: str | None) -> Resolved:
    message = non_onnx(uri)
    if message:
        return Resolved(reason=UNSUPPORTED, message=message)
    return Resolved(uri=uri, sha256=sha256)


def _phase(obj: JSON) -> str:
    return str((obj.get("status") or {}).get("phase") or "Pending")


def resolve(
    source: ModelSource, obj: JSON | None = None, trial_job: JSON | None = None
) -> Resolved:
    """Resolve the model source.

    `obj`: the referenced TrainingJob / TuningStudy (None: not found). `trial_job`: for
    `fromTuningStudy`, the best trial's TrainingJob (its sha256), when known.
    """
    if source.uri:
        return _check(source.uri, None)
    ref = source_ref(source)
    assert ref is not None  # the model validator guarantees exactly one source
    _, kind, name = ref
    if obj is None:
        return Resolved(
            reason=WAITING, message=f"waiting for {kind} {name}: it does not exist (yet)"
        )
    status = obj.get("status") or {}
    phase = _phase(obj)
    if source.variant == "int8":
        return _int8(kind, name, obj if kind == "TrainingJob" else trial_job, phase)
    if kind == "TrainingJob":
        artifacts = status.get("artifacts") or {}
        model = artifacts.get("model")
        if model:
            return _check(str(model), artifacts.get("sha256"))
        if phase == "Succeeded":
            msg = (
                f"TrainingJob {name} succeeded without a model (its code wrote no model.onnx): "
                "export one to the job's output URI, or serve a model by spec.model.uri"
            )
        elif phase == "Failed":
            msg = f"TrainingJob {name} failed without a model; waiting for a model to appear"
        else:
            msg = f"waiting for TrainingJob {name} to produce a model (phase {phase})"
        return Resolved(reason=WAITING, message=msg)
    best = status.get("bestTrial") or {}
    model = best.get("model")
    if model:
        sha = None
        if trial_job is not None:
            artifacts = (trial_job.get("status") or {}).get("artifacts") or {}
            if artifacts.get("model") == model:
                sha = artifacts.get("sha256")
        return _check(str(model), sha)
    if best:
        msg = (
            f"TuningStudy {name}: its best trial {best.get('name', '?')} has no model "
            f"(phase {phase})"
        )
    else:
        msg = f"waiting for TuningStudy {name} to have a best trial with a model (phase {phase})"
    return Resolved(reason=WAITING, message=msg)


def _int8(kind: str, name: str, job: JSON | None, phase: str) -> Resolved:
    """`variant: int8`: the quantized model of the TrainingJob (of the study's best trial)."""
    artifacts = ((job or {}).get("status") or {}).get("artifacts") or {}
    if artifacts.get("modelInt8"):
        return _check(str(artifacts["modelInt8"]), artifacts.get("sha256Int8"))
    job_name = str(((job or {}).get("metadata") or {}).get("name") or "")
    if artifacts.get("model"):
        msg = (
            f"TrainingJob {job_name} has no int8 model (model.variant int8): set "
            "spec.output.onnx.quantize on it to write one, or serve model.variant float"
        )
    elif kind == "TrainingJob":
        msg = f"waiting for TrainingJob {name} to produce an int8 model (phase {phase})"
    else:
        msg = f"waiting for TuningStudy {name} to have a best trial with an int8 model (phase {phase})"
    return Resolved(reason=WAITING, message=msg)


def deployed_model_uri(deployment: JSON | None) -> str | None:
    """The `--model` argument of a live server Deployment (what is being served now)."""
    if not deployment:
        return None
    containers = (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
        "containers"
    ) or []
    for c in containers:
        args = list(c.get("args") or [])
        if "--model" in args:
            i = args.index("--model")
            if i + 1 < len(args):
                return str(args[i + 1])
    return None

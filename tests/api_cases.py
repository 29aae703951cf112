"""Specs the API must refuse, shared by the unit tests (pydantic) and the integration tests (the
real API server with the generated CRDs). Each names the field the error must point at."""

from __future__ import annotations

import copy
from typing import Any

TJ: dict[str, Any] = {
    "model": {"recipe": "mlp-classifier"},
    "dataset": {"uri": "builtin://digits"},
    "hyperparameters": {"lr": 0.01, "epochs": 2},
}
TS: dict[str, Any] = {
    "objective": {"metric": "val_loss"},
    "searchSpace": {"lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True}},
    "trialTemplate": {"spec": copy.deepcopy(TJ)},
}
MD: dict[str, Any] = {"model": {"uri": "s3://bucket/models/digits/"}}
BASE = {"TrainingJob": TJ, "TuningStudy": TS, "ModelDeployment": MD}


def _with(kind: str, path: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE[kind])
    node = spec
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    if value is _DELETE:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = value
    return spec


_DELETE = object()

# (id, kind, spec, field the message must name)
INVALID: list[tuple[str, str, dict[str, Any], str]] = [
    ("nodes-zero", "TrainingJob", _with("TrainingJob", "resources.nodes", 0), "spec.resources.nodes"),
    ("gpus-negative", "TrainingJob", _with("TrainingJob", "resources.gpusPerNode", -1),
     "spec.resources.gpusPerNode"),
    ("bad-recipe", "TrainingJob", _with("TrainingJob", "model.recipe", "transformer"),
     "spec.model.recipe"),
    ("recipe-and-script", "TrainingJob",
     _with("TrainingJob", "model.script", {"path": "/app/train.py"}), "spec.model"),
    ("no-model-no-command", "TrainingJob", _with("TrainingJob", "model", _DELETE), "spec"),
    ("model-and-command", "TrainingJob", _with("TrainingJob", "command", ["python3", "t.py"]),
     "spec"),
    ("bad-dataset-scheme", "TrainingJob", _with("TrainingJob", "dataset.uri", "ftp://x/y.csv"),
     "spec.dataset.uri"),
    ("bad-cpu-quantity", "TrainingJob", _with("TrainingJob", "resources.cpu", "lots"),
     "spec.resources.cpu"),
    ("cpu-limit-below-request", "TrainingJob",
     _with("TrainingJob", "resources", {"cpu": "2", "cpuLimit": "1"}), "spec.resources.cpuLimit"),
    ("run-as-root", "TrainingJob", _with("TrainingJob", "pod.runAsUser", 0),
     "spec.pod.runAsUser"),
    ("reserved-env", "TrainingJob",
     _with("TrainingJob", "pod.env", [{"name": "HP_LR", "value": "1"}]), "spec.pod.env[0]"),
    ("reserved-env-rank", "TrainingJob",
     _with("TrainingJob", "pod.env", [{"name": "WORLD_SIZE", "value": "1"}]), "spec.pod.env[0]"),
    ("volume-two-sources", "TrainingJob",
     _with("TrainingJob", "pod.volumes",
           [{"name": "data", "mountPath": "/data", "claimName": "c", "secretName": "s"}]),
     "spec.pod.volumes[0]"),
    ("volume-no-source", "TrainingJob",
     _with("TrainingJob", "pod.volumes", [{"name": "data", "mountPath": "/data"}]),
     "spec.pod.volumes[0]"),
    ("volume-reserved-path", "TrainingJob",
     _with("TrainingJob", "pod.volumes", [{"name": "x", "mountPath": "/dev/shm", "emptyDir": {}}]),
     "spec.pod.volumes[0]"),
    ("reserved-label", "TrainingJob",
     _with("TrainingJob", "pod.labels", {"kubeforge.io/trainingjob": "x"}), "spec.pod.labels"),
    ("hp-collision", "TrainingJob",
     _with("TrainingJob", "hyperparameters", {"batch-size": 1, "batch_size": 2}),
     "spec.hyperparameters"),
    ("file-collector-no-path", "TrainingJob",
     _with("TrainingJob", "metricsCollector", {"kind": "File"}), "spec.metricsCollector"),
    ("bad-collector-kind", "TrainingJob",
     _with("TrainingJob", "metricsCollector", {"kind": "Prometheus"}),
     "spec.metricsCollector.kind"),
    ("negative-backoff", "TrainingJob", _with("TrainingJob", "runPolicy.backoffLimit", -1),
     "spec.runPolicy.backoffLimit"),
    ("bad-opset", "TrainingJob", _with("TrainingJob", "output.onnx.opset", 3),
     "spec.output.onnx.opset"),
    ("unknown-field", "TrainingJob", _with("TrainingJob", "resources.gpu", 1), "spec.resources"),
    ("low-not-below-high", "TuningStudy",
     _with("TuningStudy", "searchSpace.lr", {"type": "float", "low": 0.1, "high": 0.01}),
     "spec.searchSpace[lr]"),
    ("categorical-no-choices", "TuningStudy",
     _with("TuningStudy", "searchSpace.opt", {"type": "categorical"}), "spec.searchSpace.opt"),
    ("log-nonpositive", "TuningStudy",
     _with("TuningStudy", "searchSpace.lr", {"type": "float", "low": 0.0, "high": 1.0, "log": True}),
     "spec.searchSpace[lr]"),
    ("grid-infinite", "TuningStudy", _with("TuningStudy", "algorithm", {"name": "grid"}),
     "spec.searchSpace"),
    ("sampler-setting-typo", "TuningStudy",
     _with("TuningStudy", "algorithm", {"name": "tpe", "settings": {"n_startup_trails": 5}}),
     "spec.algorithm.settings"),
    ("pruner-setting-typo", "TuningStudy",
     _with("TuningStudy", "earlyStopping", {"name": "median", "settings": {"percentile": 5}}),
     "spec.earlyStopping.settings"),
    ("bad-algorithm", "TuningStudy", _with("TuningStudy", "algorithm", {"name": "bayes"}),
     "spec.algorithm.name"),
    ("parallelism-zero", "TuningStudy", _with("TuningStudy", "parallelism", 0),
     "spec.parallelism"),
    ("no-objective-metric", "TuningStudy", _with("TuningStudy", "objective", {}),
     "spec.objective.metric"),
    ("bad-direction", "TuningStudy", _with("TuningStudy", "objective.direction", "down"),
     "spec.objective.direction"),
    ("two-model-sources", "ModelDeployment",
     _with("ModelDeployment", "model.fromTrainingJob", "digits"), "spec.model"),
    ("no-model-source", "ModelDeployment", _with("ModelDeployment", "model", {}), "spec.model"),
    ("min-above-max", "ModelDeployment",
     _with("ModelDeployment", "autoscaling", {"minReplicas": 5, "maxReplicas": 2}),
     "spec.autoscaling.minReplicas"),
    ("bad-provider", "ModelDeployment",
     _with("ModelDeployment", "runtime", {"executionProvider": "rocm"}),
     "spec.runtime.executionProvider"),
    ("cuda-without-gpus", "ModelDeployment",
     _with("ModelDeployment", "runtime", {"executionProvider": "cuda"}),
     "spec.runtime.executionProvider"),
    ("batch-size-zero", "ModelDeployment",
     _with("ModelDeployment", "runtime", {"batching": {"maxBatchSize": 0}}),
     "spec.runtime.batching.maxBatchSize"),
    ("model-bad-scheme", "ModelDeployment", _with("ModelDeployment", "model.uri", "ftp://x/m.onnx"),
     "spec.model.uri"),
]

# Refused by the operator (pydantic; the TrainingJob fails with reason InvalidSpec naming the
# field), not at admission: hyperparameter values are of any JSON type, which CEL cannot type.
OPERATOR_ONLY = {"hp-collision"}
ADMISSION = [c for c in INVALID if c[0] not in OPERATOR_ONLY]

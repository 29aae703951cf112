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
    # --- what the API server used to accept and then refused on the child (issue 18) -------------
    ("negative-cpu", "TrainingJob", _with("TrainingJob", "resources.cpu", "-1"),
     "spec.resources.cpu"),
    ("negative-memory-limit", "TrainingJob", _with("TrainingJob", "resources.memoryLimit", "-1Gi"),
     "spec.resources.memoryLimit"),
    ("quantity-two-dots", "TrainingJob", _with("TrainingJob", "resources.memory", "1.2.3Gi"),
     "spec.resources.memory"),
    ("negative-shm", "TrainingJob", _with("TrainingJob", "resources.shmSize", "-64Mi"),
     "spec.resources.shmSize"),
    ("fractional-extended", "TrainingJob",
     _with("TrainingJob", "resources.extended", {"example.com/fpga": "500m"}),
     "spec.resources.extended"),
    ("extended-not-qualified", "TrainingJob",
     _with("TrainingJob", "resources.extended", {"fpga": 1}), "spec.resources.extended"),
    ("gpu-resource-unqualified", "TrainingJob", _with("TrainingJob", "resources.gpuResource", "gpu"),
     "spec.resources.gpuResource"),
    ("label-value-invalid", "TrainingJob", _with("TrainingJob", "pod.labels", {"team": "ml team!"}),
     "spec.pod.labels"),
    ("label-key-invalid", "TrainingJob", _with("TrainingJob", "pod.labels", {"a b": "x"}),
     "spec.pod.labels"),
    ("annotation-key-invalid", "TrainingJob",
     _with("TrainingJob", "pod.annotations", {"a/b/c": "x"}), "spec.pod.annotations"),
    ("node-selector-value-invalid", "TrainingJob",
     _with("TrainingJob", "scheduling.nodeSelector", {"disk": "fast ssd"}),
     "spec.scheduling.nodeSelector"),
    ("node-selector-key-invalid", "TrainingJob",
     _with("TrainingJob", "scheduling.nodeSelector", {"-disk": "ssd"}),
     "spec.scheduling.nodeSelector"),
    ("affinity-unknown-field", "TrainingJob",
     _with("TrainingJob", "scheduling.affinity", {"nodeAfinity": {}}), "spec.scheduling.affinity"),
    ("affinity-bad-operator", "TrainingJob",
     _with("TrainingJob", "scheduling.affinity", {"nodeAffinity": {
         "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
             {"matchExpressions": [{"key": "zone", "operator": "Near", "values": ["a"]}]}]}}}),
     "spec.scheduling.affinity.nodeAffinity"),
    ("affinity-in-without-values", "TrainingJob",
     _with("TrainingJob", "scheduling.affinity", {"podAntiAffinity": {
         "requiredDuringSchedulingIgnoredDuringExecution": [{
             "topologyKey": "kubernetes.io/hostname",
             "labelSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]}}]}}),
     "spec.scheduling.affinity.podAntiAffinity"),
    ("affinity-no-topology-key", "TrainingJob",
     _with("TrainingJob", "scheduling.affinity", {"podAffinity": {
         "requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {}}]}}),
     "spec.scheduling.affinity.podAffinity"),
    ("toleration-seconds-without-noexecute", "TrainingJob",
     _with("TrainingJob", "scheduling.tolerations",
           [{"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 5}]),
     "spec.scheduling.tolerations[0]"),
    ("value-from-no-key", "TrainingJob",
     _with("TrainingJob", "pod.env", [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s"}}}]),
     "spec.pod.env[0].valueFrom.secretKeyRef.key"),
    ("value-from-two-sources", "TrainingJob",
     _with("TrainingJob", "pod.env", [{"name": "X", "valueFrom": {
         "fieldRef": {"fieldPath": "metadata.name"},
         "configMapKeyRef": {"name": "c", "key": "k"}}}]),
     "spec.pod.env[0].valueFrom"),
    ("value-from-bad-field-path", "TrainingJob",
     _with("TrainingJob", "pod.env", [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.x"}}}]),
     "spec.pod.env[0].valueFrom.fieldRef.fieldPath"),
    ("value-and-value-from", "TrainingJob",
     _with("TrainingJob", "pod.env", [{"name": "X", "value": "1", "valueFrom": {
         "fieldRef": {"fieldPath": "metadata.name"}}}]),
     "spec.pod.env[0].valueFrom"),
    ("env-from-no-source", "TrainingJob", _with("TrainingJob", "pod.envFrom", [{"prefix": "A_"}]),
     "spec.pod.envFrom[0]"),
    ("queue-name-invalid", "TrainingJob",
     _with("TrainingJob", "scheduling.queueName", "team queue"), "spec.scheduling.queueName"),
    ("service-account-invalid", "TrainingJob",
     _with("TrainingJob", "pod.serviceAccountName", "Not_Valid"), "spec.pod.serviceAccountName"),
    ("volume-name-invalid", "TrainingJob",
     _with("TrainingJob", "pod.volumes", [{"name": "Data_1", "mountPath": "/data", "emptyDir": {}}]),
     "spec.pod.volumes[0].name"),
    ("volume-claim-invalid", "TrainingJob",
     _with("TrainingJob", "pod.volumes", [{"name": "d", "mountPath": "/data", "claimName": "My_Claim"}]),
     "spec.pod.volumes[0].claimName"),
    ("volume-mount-path-twice", "TrainingJob",
     _with("TrainingJob", "pod.volumes", [{"name": "a", "mountPath": "/data", "emptyDir": {}},
                                         {"name": "b", "mountPath": "/data", "emptyDir": {}}]),
     "spec.pod.volumes"),
    ("run-as-user-above-int32", "TrainingJob", _with("TrainingJob", "pod.runAsUser", 2**31),
     "spec.pod.runAsUser"),
    ("seed-negative", "TuningStudy", _with("TuningStudy", "algorithm", {"name": "qmc", "seed": -1}),
     "spec.algorithm.seed"),
    ("image-pull-secret-invalid", "TrainingJob",
     _with("TrainingJob", "pod.imagePullSecrets", ["Reg Cred"]), "spec.pod.imagePullSecrets[0]"),
    ("md-service-account-invalid", "ModelDeployment",
     _with("ModelDeployment", "pod.serviceAccountName", "Not_Valid"), "spec.pod.serviceAccountName"),
    ("md-negative-memory", "ModelDeployment", _with("ModelDeployment", "resources.memory", "-1Gi"),
     "spec.resources.memory"),
    ("choices-null", "TuningStudy",
     _with("TuningStudy", "searchSpace.opt", {"type": "categorical", "choices": [None, "adam"]}),
     "spec.searchSpace[opt]"),
    ("choices-object", "TuningStudy",
     _with("TuningStudy", "searchSpace.opt", {"type": "categorical", "choices": [{"a": 1}]}),
     "spec.searchSpace[opt].choices"),
    ("grid-dimension-too-big", "TuningStudy",
     _with("TuningStudy", "searchSpace.n", {"type": "int", "low": 0, "high": 1e18})
     | {"algorithm": {"name": "grid"}, "searchSpace": {"n": {"type": "int", "low": 0, "high": 1e18}}},
     "spec.searchSpace"),
    ("grid-product-too-big", "TuningStudy",
     _with("TuningStudy", "algorithm", {"name": "grid"})
     | {"searchSpace": {"a": {"type": "int", "low": 0, "high": 99999},
                        "b": {"type": "int", "low": 0, "high": 9999}}},
     "spec.searchSpace"),
    ("percentile-above-100", "TuningStudy",
     _with("TuningStudy", "earlyStopping", {"name": "percentile", "settings": {"percentile": 200}}),
     "spec.earlyStopping.settings.percentile"),
    ("qmc-type-bogus", "TuningStudy",
     _with("TuningStudy", "algorithm", {"name": "qmc", "settings": {"qmc_type": "bogus"}}),
     "spec.algorithm.settings.qmc_type"),
    ("tpe-group-without-multivariate", "TuningStudy",
     _with("TuningStudy", "algorithm", {"name": "tpe", "settings": {"group": True}}),
     "spec.algorithm.settings"),
    ("hyperband-bootstrap-without-max", "TuningStudy",
     _with("TuningStudy", "earlyStopping", {"name": "hyperband", "settings": {"bootstrap_count": 2}}),
     "spec.earlyStopping.settings"),
    ("reduction-factor-one", "TuningStudy",
     _with("TuningStudy", "earlyStopping", {"name": "hyperband", "settings": {"reduction_factor": 1}}),
     "spec.earlyStopping.settings.reduction_factor"),
    ("promote-name-leading-digit", "TuningStudy",
     _with("TuningStudy", "promote", {"modelDeployment": "1-digits"}), "spec.promote.modelDeployment"),
    ("gp-not-offered", "TuningStudy", _with("TuningStudy", "algorithm", {"name": "gp"}),
     "spec.algorithm.name"),
    ("trial-template-negative-cpu", "TuningStudy",
     _with("TuningStudy", "trialTemplate.spec.resources", {"cpu": "-2"}),
     "spec.trialTemplate.spec.resources.cpu"),
]

# (id, kind, metadata.name): names too long or not RFC 1035 labels for the children made from them.
INVALID_NAMES: list[tuple[str, str, str]] = [
    ("tj-name-too-long", "TrainingJob", "t" * 53),
    ("tj-name-with-dots", "TrainingJob", "digits.mlp"),
    ("tj-name-leading-digit", "TrainingJob", "1-digits"),
    ("ts-name-with-dots", "TuningStudy", "my.study"),
    ("ts-name-too-long", "TuningStudy", "s" * 64),
    ("md-name-too-long", "ModelDeployment", "m" * 64),
    ("md-name-with-dots", "ModelDeployment", "digits.v2"),
]

# Refused by the operator (pydantic; the TrainingJob fails with reason InvalidSpec naming the
# field), not at admission: hyperparameter values are of any JSON type, which CEL cannot type.
# The product of a grid's dimensions, too: CEL has no fold to multiply over a map (each dimension
# is bounded at admission, the product by the operator at once, Failed with InvalidSpec). And
# choices that are objects or lists: CEL cannot see values of any JSON type (null it refuses).
OPERATOR_ONLY = {"hp-collision", "grid-product-too-big", "choices-object"}
ADMISSION = [c for c in INVALID if c[0] not in OPERATOR_ONLY]

"""TrainingJob: train one model, on one or many (GPU) nodes."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from kubeforge.api._base import (
    FREE_FORM,
    KubeModel,
    OptionalQuantity,
    Quantity,
    cel,
    check_object_name,
    rule,
)
from kubeforge.api._conditions import Condition, conditions_field
from kubeforge.api._pod import PodSettings
from kubeforge.api._reserved import HYPERPARAMETER_NAME, hp_env_name
from kubeforge.api._resources import _LIMIT_RULES, ComputeResources
from kubeforge.api._scheduling import TrainingScheduling
from kubeforge.api._storage import STORAGE_SCHEMES, SecretName, check_uri, storage_uri_rule
from kubeforge.api._training_output import Checkpoint, Output

RECIPES = ("mlp-classifier", "mlp-regressor", "cnn-classifier")
DATASET_SCHEMES = ("builtin", *STORAGE_SCHEMES)

TRAININGJOB_NAME_MAX = 52
"""A TrainingJob's name is its Job's and headless Service's name, and its pods' hostnames are
`<name>-<index>` (≤ 63 with up to 1,024 nodes): 52 leaves room, as trial names do."""

EXIT_BAD_CONFIG = 2
"""Exit code of a trainer (or kubeforge-report) that was given a bad configuration: no retry."""
EXIT_STOPPED = 3
"""Exit code of a trainer told to stop (a pruned trial): not a failure."""


class ScriptSource(KubeModel):
    """A user's Python training script run by the built-in trainer with its reporting API."""

    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        rule(
            "has(self.path) != has(self.configMap)",
            "script needs either path or configMap (with key), not both",
        ),
        rule("!has(self.configMap) || has(self.key)", "script.configMap needs a key",
             field_path=".key"),
    )}

    config_map: str | None = Field(
        default=None, description="A ConfigMap holding the script (with `key`)."
    )
    key: str | None = Field(default=None, description="The ConfigMap key holding the script.")
    path: str | None = Field(
        default=None, description="Path of the script inside the image.", pattern=r"^/.*"
    )

    @model_validator(mode="after")
    def _one_source(self) -> ScriptSource:
        if (self.path is None) == (self.config_map is None):
            raise ValueError("script needs either path or configMap (with key), not both")
        if self.config_map is not None and not self.key:
            raise ValueError("script.configMap needs a key")
        return self


class TrainingModel(KubeModel):
    """What the built-in trainer trains: a built-in recipe or a user script."""

    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        rule("has(self.recipe) != has(self.script)",
             "model needs exactly one of recipe or script"),
    )}

    recipe: Literal["mlp-classifier", "mlp-regressor", "cnn-classifier"] | None = Field(
        default=None, description="A built-in recipe: mlp-classifier, mlp-regressor, cnn-classifier."
    )
    script: ScriptSource | None = Field(
        default=None, description="A user script run with the trainer's reporting API."
    )

    @model_validator(mode="after")
    def _one(self) -> TrainingModel:
        if (self.recipe is None) == (self.script is None):
            raise ValueError("model needs exactly one of recipe or script")
        return self


class Dataset(KubeModel):
    """Where the training data comes from."""

    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        storage_uri_rule(DATASET_SCHEMES))}

    uri: str = Field(
        description="builtin://NAME (digits, iris, wine, breast_cancer, diabetes), file://, "
        "pvc://CLAIM/PATH, s3://, gs://, az://, hf:// (CSV or Parquet).",
        min_length=1,
    )
    secret_ref: SecretName = ""

    @field_validator("uri")
    @classmethod
    def _scheme(cls, uri: str) -> str:
        return check_uri(uri, DATASET_SCHEMES)


class TrainingResources(ComputeResources):
    """Nodes, processes, GPUs and memory of a training job."""

    model_config = {**ComputeResources.model_config, "json_schema_extra": _LIMIT_RULES}

    nodes: int = Field(default=1, ge=1, le=1024, description="Pods (nodes) in the job.")
    gpus_per_node: int = Field(default=0, ge=0, le=64, description="GPUs per pod.")
    procs_per_node: int = Field(
        default=1,
        ge=1,
        le=128,
        description="Processes torchrun starts per pod (usually one per GPU). A script that "
        "calls torchrun itself keeps 1 and sets its own.",
    )
    memory: Quantity = Field(default="2Gi", description="Memory request per pod.")
    shm_size: OptionalQuantity = Field(
        default="1Gi", description="Size of /dev/shm (a memory emptyDir); empty: none."
    )


class MetricsCollector(KubeModel):
    """How metrics are read from the training program."""

    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        rule("self.kind != 'File' || self.path != ''", "metricsCollector.kind File needs a path",
             field_path=".path"),
        rule("self.kind != 'Trainer' || (self.path == '' && self.pattern == '')",
             "path and pattern apply only to kind StdOut or File"),
        rule("self.pattern == '' || (self.pattern.contains('(?P<name>') && "
             "self.pattern.contains('(?P<value>'))",
             "pattern needs the named groups (?P<name>...) and (?P<value>...)",
             field_path=".pattern"),
    )}

    kind: Literal["Trainer", "StdOut", "File"] = Field(
        default="Trainer",
        description="Trainer: the trainer contract (built-in trainer or kubeforge reporting API); "
        "StdOut: metric lines printed by the program; File: metric lines written to `path`.",
    )
    path: str = Field(default="", description="The file to tail (kind File).")
    format: Literal["text", "json"] = Field(
        default="text", description="text: `name=value` pairs per line; json: one object per line."
    )
    pattern: str = Field(
        default="",
        description="Optional regex with named groups `name` and `value` for each metric.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> MetricsCollector:
        if self.kind == "File" and not self.path:
            raise ValueError("metricsCollector.kind File needs a path")
        if self.kind == "Trainer" and (self.path or self.pattern):
            raise ValueError("path and pattern apply only to kind StdOut or File")
        if self.pattern:
            try:
                compiled = re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regex: {exc}") from exc
            if not {"name", "value"} <= set(compiled.groupindex):
                raise ValueError("pattern needs the named groups (?P<name>...) and (?P<value>...)")
        return self


class RunPolicy(KubeModel):
    backoff_limit: int = Field(default=3, ge=0, le=100, description="Retries before the job fails.")
    active_deadline_seconds: int = Field(
        default=0, ge=0, le=2147483647,
        description="Wall-clock limit of the whole job in seconds (0: none)."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=2147483647,
        description="Delete the Job (and pods) this long after it finished; null: keep. "
        "The TrainingJob itself always stays.",
    )


_IMMUTABLE_MSG = "is immutable: delete and recreate the TrainingJob (only suspend and runPolicy change)"
_IMMUTABLE = ("image", "command", "args", "model", "dataset", "hyperparameters", "resources",
              "scheduling", "pod", "metricsCollector", "output", "checkpoint")


class TrainingJobSpec(KubeModel):
    """The desired training run."""

    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        rule("has(self.model) != (size(self.command) > 0)",
             "set spec.model (the built-in trainer) or spec.command (your own program): one of them"),
        rule("!has(self.model) || !has(self.model.recipe) || has(self.dataset)",
             "spec.dataset is required for a built-in recipe", field_path=".dataset"),
        rule("size(self.args) == 0 || size(self.command) > 0",
             "spec.args needs spec.command", field_path=".args"),
        rule("!has(self.output) || !has(self.output.onnx) || !has(self.output.onnx.quantize) "
             "|| (has(self.model) && has(self.model.recipe))",
             "spec.output.onnx.quantize needs a built-in recipe (spec.model.recipe): the "
             "built-in trainer quantizes the model it exports",
             field_path=".output.onnx.quantize"),
        *[
            rule(f"has(self.{f}) == has(oldSelf.{f}) && (!has(self.{f}) || self.{f} == oldSelf.{f})",
                 f"spec.{f} {_IMMUTABLE_MSG}", field_path=f".{f}")
            for f in _IMMUTABLE
        ],
    )}

    image: str = Field(
        default="", description="Container image; empty: the operator's trainer image."
    )
    command: list[str] = Field(
        default_factory=list,
        description="Your own program, launched by torchrun on every node (`torchrun --no-python "
        "... COMMAND ARGS`), directly for one process. Replaces the built-in trainer.",
        max_length=64,
    )
    args: list[str] = Field(
        default_factory=list,
        description="Arguments of `command`; $(HP_NAME) expands to a hyperparameter.",
        max_length=256,
    )
    model: TrainingModel | None = Field(
        default=None,
        description="What the built-in trainer trains: {recipe: mlp-classifier} or {script: ...}.",
    )
    dataset: Dataset | None = Field(default=None, description="The training data.")
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Free-form hyperparameters handed to the trainer; each is also exported as "
        "HP_<NAME> (upper case, non-alphanumerics become _).",
        # Values are of any JSON type, which CEL cannot type: names and HP_ collisions are
        # checked by the operator (condition InvalidSpec naming the field), not at admission.
        json_schema_extra={**FREE_FORM, "maxProperties": 64},
    )
    resources: TrainingResources = Field(
        default_factory=TrainingResources, description="Nodes, processes, GPUs, CPU and memory."
    )
    scheduling: TrainingScheduling = Field(
        default_factory=TrainingScheduling,
        description="Node selection, tolerations, affinity, priority and Kueue queue.",
    )
    pod: PodSettings = Field(default_factory=PodSettings, description="Pod settings.")
    metrics_collector: MetricsCollector = Field(
        default_factory=MetricsCollector, description="How metrics are collected."
    )
    output: Output = Field(default_factory=Output, description="Where artefacts are written.")
    checkpoint: Checkpoint = Field(default_factory=Checkpoint, description="Checkpointing.")
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="Retries and deadlines.")
    suspend: bool = Field(
        default=False, description="Suspend the job: its pods go, its progress is kept."
    )

    @field_validator("hyperparameters")
    @classmethod
    def _hp_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        seen: dict[str, str] = {}
        for name in value:
            if not re.match(HYPERPARAMETER_NAME, name):
                raise ValueError(f"hyperparameter name {name!r} must match {HYPERPARAMETER_NAME}")
            env = hp_env_name(name)
            if env in seen:
                raise ValueError(
                    f"hyperparameters {seen[env]!r} and {name!r} both map to {env}"
                )
            seen[env] = name
        return value

    @model_validator(mode="after")
    def _program(self) -> TrainingJobSpec:
        if (self.model is None) == (not self.command):
            raise ValueError(
                "set spec.model (the built-in trainer) or spec.command (your own program): "
                "one of them"
            )
        if self.model is not None and self.model.recipe is not None and self.dataset is None:
            raise ValueError("spec.dataset is required for a built-in recipe")
        if self.args and not self.command:
            raise ValueError("spec.args needs spec.command")
        if self.output.onnx.quantize is not None and (
            self.model is None or self.model.recipe is None
        ):
            raise ValueError(
                "spec.output.onnx.quantize needs a built-in recipe (spec.model.recipe): the "
                "built-in trainer quantizes the model it exports"
            )
        return self


class TrainingPhase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class NodeCounts(KubeModel):
    active: int = Field(default=0, description="Pods running.")
    succeeded: int = Field(default=0, description="Pods that finished successfully.")
    failed: int = Field(default=0, description="Pods that failed (all attempts).")


class Progress(KubeModel):
    epoch: int | None = Field(default=None, description="Latest epoch reported.")
    step: int | None = Field(default=None, description="Latest step reported.")
    metrics: dict[str, float] = Field(
        default_factory=dict, description="Metrics of the latest intermediate report."
    )


class Artifacts(KubeModel):
    model: str | None = Field(default=None, description="URI of model.onnx.")
    checkpoint: str | None = Field(default=None, description="URI of the last checkpoint.")
    sha256: str | None = Field(default=None, description="SHA-256 of model.onnx.")
    bytes: int | None = Field(default=None, description="Size of model.onnx in bytes.")
    model_int8: str | None = Field(
        default=None, description="URI of model.int8.onnx (spec.output.onnx.quantize)."
    )
    sha256_int8: str | None = Field(default=None, description="SHA-256 of model.int8.onnx.")
    bytes_int8: int | None = Field(default=None, description="Size of model.int8.onnx in bytes.")


class TrainingJobStatus(KubeModel):
    """What the operator observed."""

    phase: TrainingPhase = Field(default=TrainingPhase.PENDING, description="Summary phase.")
    message: str = Field(default="", description="Why the job is in this phase.")
    observed_generation: int | None = Field(
        default=None, description="The generation this status was computed from."
    )
    conditions: list[Condition] = conditions_field()
    start_time: str | None = Field(default=None, description="When the job started running.")
    completion_time: str | None = Field(default=None, description="When the job finished.")
    nodes: NodeCounts = Field(default_factory=NodeCounts, description="Pods by state.")
    restarts: int = Field(default=0, description="Pod restarts and retries so far.")
    progress: Progress | None = Field(default=None, description="The latest intermediate report.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Final metrics.")
    artifacts: Artifacts | None = Field(default=None, description="Where the results are.")


class TrainingJob(KubeModel):
    """A TrainingJob object (apiVersion, kind, metadata, spec, status)."""

    model_config = {**KubeModel.model_config, "extra": "ignore"}

    api_version: str = Field(default="kubeforge.io/v1alpha1", alias="apiVersion")
    kind: Literal["TrainingJob"] = "TrainingJob"
    metadata: dict[str, Any] = Field(default_factory=dict)

    NAME_MAX: ClassVar[int] = TRAININGJOB_NAME_MAX

    @field_validator("metadata")
    @classmethod
    def _name(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        return check_object_name(metadata, cls.NAME_MAX)
    spec: TrainingJobSpec
    status: TrainingJobStatus | None = None

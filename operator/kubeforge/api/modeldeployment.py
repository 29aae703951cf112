"""ModelDeployment: serve an ONNX model with ONNX Runtime."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from kubeforge.api._autoscaling import Autoscaling
from kubeforge.api._base import KubeModel, cel, check_object_name, rule
from kubeforge.api._conditions import Condition, conditions_field
from kubeforge.api._pod import PodSettings
from kubeforge.api._resources import _LIMIT_RULES, ComputeResources
from kubeforge.api._scheduling import Scheduling
from kubeforge.api._storage import STORAGE_SCHEMES, SecretName, check_uri
from kubeforge.api.rollout import Rollout, RolloutStatus

MODEL_SCHEMES = STORAGE_SCHEMES

MODELDEPLOYMENT_NAME_MAX = 63
"""A ModelDeployment's name is its Deployment's, Service's (RFC 1035 label) and model's name."""


class ModelSource(KubeModel):
    """The model to serve: a URI, or the model another kubeforge resource produced."""

    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        rule("[has(self.uri) && self.uri != '', has(self.fromTrainingJob), "
             "has(self.fromTuningStudy)].filter(x, x).size() == 1",
             "model needs exactly one of uri, fromTrainingJob or fromTuningStudy"),
        rule("!has(self.uri) || self.uri == '' || self.uri.matches('^("
             + "|".join(MODEL_SCHEMES) + ")://')",
             "uri must start with one of: " + ", ".join(s + "://" for s in MODEL_SCHEMES),
             field_path=".uri"),
        rule("!has(self.variant) || self.variant == 'float' || !has(self.uri) || self.uri == ''",
             "model.variant int8 needs fromTrainingJob or fromTuningStudy (a uri names the "
             "file to serve itself)", field_path=".variant"),
    )}

    uri: str | None = Field(
        default=None,
        description="A model.onnx file or a folder holding model.onnx and its external-data files "
        "(file://, pvc://CLAIM/PATH, s3://, gs://, az://).",
    )
    secret_ref: SecretName = ""
    from_training_job: str | None = Field(
        default=None, description="Serve the model a TrainingJob in this namespace produced."
    )
    from_tuning_study: str | None = Field(
        default=None, description="Serve the best model of a TuningStudy in this namespace."
    )

    variant: Literal["float", "int8"] = Field(
        default="float",
        description="Which model of a TrainingJob (or of a study's chosen trial) to serve: "
        "float (model.onnx) or int8 (model.int8.onnx, written when the job sets "
        "spec.output.onnx.quantize).",
    )

    @field_validator("uri")
    @classmethod
    def _scheme(cls, uri: str | None) -> str | None:
        return check_uri(uri, MODEL_SCHEMES) if uri else uri

    @model_validator(mode="after")
    def _one(self) -> ModelSource:
        given = [bool(self.uri), self.from_training_job is not None,
                 self.from_tuning_study is not None]
        if sum(given) != 1:
            raise ValueError("model needs exactly one of uri, fromTrainingJob or fromTuningStudy")
        if self.variant == "int8" and self.uri:
            raise ValueError(
                "model.variant int8 needs fromTrainingJob or fromTuningStudy (a uri names the "
                "file to serve itself)"
            )
        return self


class Batching(KubeModel):
    max_batch_size: int = Field(
        default=32, ge=1, le=4096, description="Most requests run together (1: no batching)."
    )
    max_delay_ms: float = Field(
        default=2, ge=0, le=1000, description="Longest wait for a batch to fill, in ms."
    )


_MIB = 1024 * 1024


class ServerLimits(KubeModel):
    """What one server replica holds for its clients; each is a kubeforge-server flag."""

    max_request_bytes: int = Field(
        default=64 * _MIB, ge=1024, le=2**31 - 1,
        description="Largest request body or gRPC message in bytes (413 / RESOURCE_EXHAUSTED).",
    )
    max_json_bytes: int = Field(
        default=2 * _MIB, ge=1024, le=2**31 - 1,
        description="Largest JSON request in bytes (413); larger tensors go binary.",
    )
    max_request_rows: int = Field(
        default=1024, ge=1, le=2**31 - 1,
        description="Largest batch (leading dimension) of one request (400).",
    )
    max_queue: int = Field(
        default=256, ge=1, le=1_000_000,
        description="Requests queued or running per model (503 + Retry-After beyond).",
    )
    max_connections: int = Field(
        default=1000, ge=1, le=1_000_000, description="Open HTTP connections (503 beyond)."
    )
    max_buffered_bytes: int = Field(
        default=256 * _MIB, ge=1024, le=2**40,
        description="Request bytes held in memory across connections (503 + Retry-After).",
    )
    max_header_bytes: int = Field(
        default=64 * 1024, ge=1024, le=16 * _MIB,
        description="Request line and headers in bytes (431 beyond).",
    )
    header_timeout_seconds: float = Field(
        default=10, gt=0, le=3600, description="Time to receive a request's headers (408)."
    )
    body_timeout_seconds: float = Field(
        default=60, gt=0, le=3600, description="Time to receive a request's body (408)."
    )
    keep_alive_timeout_seconds: float = Field(
        default=65, gt=0, le=3600, description="Idle keep-alive connections close after this."
    )


class Runtime(KubeModel):
    image: str = Field(default="", description="Server image; empty: the operator's server image.")
    execution_provider: Literal["cpu", "cuda", "tensorrt"] = Field(
        default="cpu", description="ONNX Runtime execution provider: cpu, cuda or tensorrt."
    )
    intra_op_threads: int = Field(
        default=0, ge=0, le=256, description="ONNX Runtime intra-op threads (0: from the CPU limit)."
    )
    batching: Batching = Field(default_factory=Batching, description="Dynamic batching.")
    limits: ServerLimits = Field(
        default_factory=ServerLimits, description="Server resource limits and timeouts."
    )


class ServingResources(ComputeResources):
    model_config = {**ComputeResources.model_config, "json_schema_extra": _LIMIT_RULES}

    gpus: int = Field(default=0, ge=0, le=16, description="GPUs per replica.")


class Monitoring(KubeModel):
    service_monitor: bool = Field(
        default=True, description="Make a ServiceMonitor when the Prometheus Operator is installed."
    )
    prometheus_rule: bool = Field(
        default=True,
        description="Make a PrometheusRule (error rate, latency, not-ready alerts) when the "
        "Prometheus Operator is installed.",
    )
    error_rate_threshold: float = Field(
        default=0.05,
        gt=0,
        le=1,
        description="Alert when more than this fraction of requests fail with a 5xx for 5 minutes.",
    )
    latency_p99_ms: float = Field(
        default=1000,
        gt=0,
        le=600000,
        description="Alert when the p99 request latency stays above this many ms for 10 minutes.",
    )


class ModelDeploymentSpec(KubeModel):
    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        rule("self.runtime.executionProvider == 'cpu' || self.resources.gpus > 0",
             "executionProvider cuda or tensorrt needs resources.gpus > 0",
             field_path=".runtime.executionProvider"),
    )}

    model: ModelSource = Field(description="The model to serve.")
    runtime: Runtime = Field(default_factory=Runtime, description="The serving runtime.")
    resources: ServingResources = Field(
        default_factory=ServingResources, description="Resources per replica."
    )
    scheduling: Scheduling = Field(default_factory=Scheduling, description="Where replicas run.")
    pod: PodSettings = Field(default_factory=PodSettings, description="Pod settings.")
    replicas: int = Field(
        default=1, ge=0, le=1000, description="Replicas (the starting count when autoscaling)."
    )
    autoscaling: Autoscaling | None = Field(
        default=None,
        description="Autoscaling (HPA on cpu/memory, KEDA on concurrency/rps); absent: a "
        "fixed number of replicas.",
    )
    rollout: Rollout = Field(default_factory=Rollout, description="How changes roll out.")
    monitoring: Monitoring = Field(default_factory=Monitoring, description="Prometheus objects.")

    @model_validator(mode="after")
    def _gpu_provider(self) -> ModelDeploymentSpec:
        if self.runtime.execution_provider != "cpu" and self.resources.gpus == 0:
            raise ValueError("executionProvider cuda or tensorrt needs resources.gpus > 0")
        return self


class ServingPhase(StrEnum):
    PENDING = "Pending"
    LOADING = "Loading"
    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class ReplicaCounts(KubeModel):
    desired: int = Field(default=0, description="Replicas wanted.")
    ready: int = Field(default=0, description="Replicas ready.")
    updated: int = Field(default=0, description="Replicas on the current spec.")


class TensorSpec(KubeModel):
    name: str = Field(description="Tensor name.")
    datatype: str = Field(description="KServe v2 datatype, e.g. FP32.")
    shape: list[int] = Field(description="Shape; -1 for a dynamic dimension.")


class ServedModel(KubeModel):
    uri: str | None = Field(default=None, description="The resolved model URI.")
    sha256: str | None = Field(default=None, description="SHA-256 of model.onnx.")
    inputs: list[TensorSpec] = Field(default_factory=list, description="Input signature.")
    outputs: list[TensorSpec] = Field(default_factory=list, description="Output signature.")


class AutoscalerView(KubeModel):
    """What the autoscaler sees and decided (read from the HorizontalPodAutoscaler that scales
    the Deployment: kubeforge's own for cpu/memory, KEDA's `keda-hpa-<name>` for
    concurrency/rps)."""

    kind: Literal["HorizontalPodAutoscaler", "ScaledObject"] = Field(
        description="The child that owns scaling."
    )
    metric: str = Field(description="The metric driving scaling (spec.autoscaling.metric).")
    target: str = Field(description="The target per replica, in the metric's unit.")
    current_value: str | None = Field(
        default=None,
        description="The metric's current value per replica, as the autoscaler last read it "
        "(same unit as target).",
    )
    desired_replicas: int | None = Field(default=None, description="Replicas it wants.")
    current_replicas: int | None = Field(default=None, description="Replicas it last saw.")
    last_scale_time: str | None = Field(
        default=None, description="When it last changed the replica count."
    )
    ready: bool | None = Field(
        default=None, description="Whether it can scale (AbleToScale and ScalingActive)."
    )
    message: str = Field(default="", description="Why it cannot scale, when it cannot.")
    summary: str = Field(
        default="", description="One line for kubectl: current/target metric, replicas."
    )


class ModelDeploymentStatus(KubeModel):
    phase: ServingPhase = Field(default=ServingPhase.PENDING, description="Summary phase.")
    message: str = Field(default="", description="Why it is in this phase.")
    observed_generation: int | None = Field(default=None, description="Generation observed.")
    conditions: list[Condition] = conditions_field()
    url: str | None = Field(default=None, description="In-cluster URL of the inference endpoint.")
    replicas: ReplicaCounts = Field(default_factory=ReplicaCounts, description="Replica counts.")
    model: ServedModel | None = Field(default=None, description="What is being served.")
    rollout: RolloutStatus | None = Field(
        default=None, description="The progressive rollout (strategy Canary), when one ran."
    )
    autoscaling: AutoscalerView | None = Field(
        default=None, description="The autoscaler's view (only with spec.autoscaling)."
    )


class ModelDeployment(KubeModel):
    model_config = {**KubeModel.model_config, "extra": "ignore"}

    api_version: str = Field(default="kubeforge.io/v1alpha1", alias="apiVersion")
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    metadata: dict[str, Any] = Field(default_factory=dict)

    NAME_MAX: ClassVar[int] = MODELDEPLOYMENT_NAME_MAX

    @field_validator("metadata")
    @classmethod
    def _name(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        return check_object_name(metadata, cls.NAME_MAX)
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None



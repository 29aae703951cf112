"""A ModelDeployment's spec.autoscaling: the metric, its target, replica bounds, stabilisation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kubeforge.api._base import KubeModel, cel, rule
from kubeforge.api._duration import DURATION

AUTOSCALING_METRICS = ("cpu", "memory", "concurrency", "rps")
DEFAULT_TARGETS: dict[str, float] = {"cpu": 70, "memory": 80, "concurrency": 8, "rps": 50}
"""`autoscaling.target` when left out, per metric (percent of the request for cpu/memory;
in-flight requests per replica for concurrency; requests/s per replica for rps)."""

SCALE_TO_ZERO_REFUSAL = (
    "minReplicas 0 (scale to zero) needs an activator that holds the first request while a "
    "replica starts, and kubeforge wires none yet: keep minReplicas >= 1, or install an "
    "activator (the KEDA HTTP add-on, or Knative Serving) in front of the ModelDeployment's "
    "Service as docs/autoscaling.md shows"
)


class Autoscaling(KubeModel):
    """Horizontal autoscaling: an autoscaling/v2 HPA for cpu/memory, a KEDA ScaledObject (KEDA
    is the platform's install) reading the servers' own Prometheus series for concurrency/rps."""

    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        rule("self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas",
             field_path=".minReplicas"),
        rule("self.minReplicas >= 1", SCALE_TO_ZERO_REFUSAL, field_path=".minReplicas"),
        rule("!has(self.target) || !(self.metric in ['cpu', 'memory']) || "
             "(self.target <= 100.0 && double(int(self.target)) == self.target)",
             "target of metric cpu or memory is a whole percentage from 1 to 100",
             field_path=".target"),
        rule("!has(self.prometheusAddress) || self.prometheusAddress == '' || "
             "self.metric in ['concurrency', 'rps']",
             "prometheusAddress is read only by the metrics concurrency and rps",
             field_path=".prometheusAddress"),
    )}

    min_replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Fewest replicas (>= 1: scale to zero needs an activator, see "
        "docs/autoscaling.md).",
    )
    max_replicas: int = Field(default=10, ge=1, le=1000, description="Most replicas.")
    metric: Literal["cpu", "memory", "concurrency", "rps"] = Field(
        default="cpu",
        description="What drives scaling: cpu or memory (utilisation of the request, an "
        "autoscaling/v2 HPA), concurrency (in-flight requests per replica) or rps (requests per "
        "second per replica); the last two through a KEDA ScaledObject reading the servers' "
        "Prometheus series (KEDA must be installed).",
    )
    target: float | None = Field(
        default=None,
        gt=0,
        le=1000000,
        description="The target per replica, in the metric's unit: percent of the request for "
        "cpu (default 70) and memory (80); in-flight requests for concurrency (8); requests/s "
        "for rps (50).",
    )
    scale_up_stabilization: str = Field(
        default="0s",
        pattern=DURATION,
        max_length=20,
        description="Scale up to the highest recommendation of this window (e.g. 0s, 30s).",
    )
    scale_down_stabilization: str = Field(
        default="5m",
        pattern=DURATION,
        max_length=20,
        description="Scale down only to the highest recommendation of this window, so a "
        "short lull does not drop replicas that take long to load (e.g. 5m).",
    )
    idle_after: str = Field(
        default="5m",
        pattern=DURATION,
        max_length=20,
        description="With minReplicas 0: how long without requests before scaling to zero "
        "(KEDA's cooldownPeriod); unused otherwise.",
    )
    prometheus_address: str = Field(
        default="",
        max_length=512,
        pattern=r"^$|^https?://",
        description="Prometheus the concurrency/rps trigger queries (http(s)://host:port); "
        "empty: the operator's setting (KUBEFORGE_PROMETHEUS_URL).",
    )

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must not exceed maxReplicas")
        if self.min_replicas < 1:
            raise ValueError(SCALE_TO_ZERO_REFUSAL)
        t = self.target
        if t is not None and self.metric in ("cpu", "memory") and (t > 100 or t != int(t)):
            raise ValueError("target of metric cpu or memory is a whole percentage from 1 to 100")
        if self.prometheus_address and self.metric not in ("concurrency", "rps"):
            raise ValueError("prometheusAddress is read only by the metrics concurrency and rps")
        return self

    @property
    def target_value(self) -> float:
        """The target, or the metric's documented default."""
        return self.target if self.target is not None else DEFAULT_TARGETS[self.metric]

    @property
    def uses_keda(self) -> bool:
        return self.metric in ("concurrency", "rps")

"""ModelDeployment `spec.rollout` and `status.rollout`: how a new model reaches traffic.

`RollingUpdate` (the default) replaces every replica, as a Deployment does. `Canary` runs the new
model (the candidate) beside the serving one (the stable) and walks `steps` in order whenever
`spec.model` changes: a shadow step mirrors requests from the stable servers to the candidate
(clients get the stable answers), a weight step lets the candidate answer that share of
requests. `analysis` is checked every `interval` during each step; a breach rolls back.
See docs/rollout.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kubeforge.api._base import KubeModel, cel, rule
from kubeforge.api._duration import DURATION, duration_seconds

ROLLOUT_ANNOTATION = "kubeforge.io/rollout"
"""`kubectl annotate md NAME kubeforge.io/rollout=promote` (or `abort`, or `retry` after a
rollback): a one-shot command; the operator acts on it and removes the annotation."""
ROLLOUT_COMMANDS = ("promote", "abort", "retry")

MAX_STEPS = 20


class RolloutStep(KubeModel):
    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        rule("has(self.shadow) || has(self.weight)",
             "a step needs shadow (percent mirrored) or weight (percent answered by the candidate)"),
    )}

    shadow: int | None = Field(
        default=None, ge=1, le=100,
        description="Percent of the stable servers' answered requests mirrored to the candidate "
        "(clients get the stable answers). With weight: the stable share keeps being mirrored, "
        "so output agreement is still measured.",
    )
    weight: int | None = Field(
        default=None, ge=1, le=100,
        description="Percent of requests the candidate answers. Without a Gateway it is carried "
        "by replica counts (the effective share is shown in status.rollout.weight).",
    )
    pause: str = Field(
        default="1m", pattern=DURATION, max_length=40,
        description="How long the step lasts at least (e.g. 30s, 2m, 1h); it ends once this has "
        "passed and analysis.minRequests were measured without a breach.",
    )

    @model_validator(mode="after")
    def _one(self) -> RolloutStep:
        if self.shadow is None and self.weight is None:
            raise ValueError(
                "a step needs shadow (percent mirrored) or weight (percent answered by the "
                "candidate)"
            )
        return self

    def pause_seconds(self) -> int:
        return duration_seconds(self.pause)


class PrometheusSource(KubeModel):
    url: str = Field(
        default="", max_length=2048, pattern=r"^$|^https?://",
        description="Prometheus base URL (e.g. http://prometheus-operated.monitoring:9090) to "
        "read the analysis series from; empty: the operator reads the server pods' /metrics.",
    )


class Analysis(KubeModel):
    interval: str = Field(
        default="30s", pattern=DURATION, max_length=40,
        description="How often the figures are measured and judged during a step.",
    )
    min_requests: int = Field(
        default=200, ge=1, le=10_000_000,
        description="No verdict before the candidate answered this many requests in the step "
        "(mirrored ones included).",
    )
    max_error_rate: float = Field(
        default=0.01, ge=0, le=1,
        description="Roll back when more than this fraction of the candidate's requests fail "
        "with a 5xx (mirrored: the candidate failed or could not be reached).",
    )
    max_latency_ratio: float = Field(
        default=1.5, gt=0, le=1000,
        description="Roll back when the candidate's p99 latency exceeds the stable servers' p99 "
        "by more than this factor.",
    )
    min_agreement: float = Field(
        default=0.99, ge=0, le=1,
        description="Roll back when fewer than this fraction of mirrored requests got outputs "
        "that agree with the stable model's (checked in every step that mirrors).",
    )
    agreement_tolerance: float = Field(
        default=1e-3, ge=0, le=1e9,
        description="Outputs that are not class scores agree when their largest absolute "
        "difference is within this (class scores agree on the argmax; labels when equal).",
    )
    prometheus: PrometheusSource = Field(
        default_factory=PrometheusSource, description="Optional Prometheus to read the series from."
    )

    def interval_seconds(self) -> int:
        return max(1, duration_seconds(self.interval))


class GatewayRef(KubeModel):
    name: str = Field(
        min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="The Gateway (gateway.networking.k8s.io) the HTTPRoute attaches to.",
    )
    namespace: str = Field(
        default="", max_length=63, pattern=r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="The Gateway's namespace (default: the ModelDeployment's).",
    )
    section_name: str = Field(
        default="", max_length=253, description="The Gateway listener to attach to (optional)."
    )


def default_steps() -> list[RolloutStep]:
    return [
        RolloutStep(shadow=100, pause="2m"),
        RolloutStep(weight=10, pause="2m"),
        RolloutStep(weight=50, pause="2m"),
    ]


class Rollout(KubeModel):
    model_config = {**KubeModel.model_config, "json_schema_extra": cel(
        rule("self.strategy == 'Canary' || !has(self.steps) || size(self.steps) == 0",
             "steps need strategy Canary", field_path=".steps"),
    )}

    strategy: Literal["RollingUpdate", "Canary"] = Field(
        default="RollingUpdate",
        description="RollingUpdate: replace every replica (never below the ready count the "
        "PodDisruptionBudget promises). Canary: run the new model beside the serving one and walk "
        "`steps`, judged by `analysis` (docs/rollout.md).",
    )
    steps: list[RolloutStep] | None = Field(
        default=None, max_length=MAX_STEPS,
        description="Canary steps, in order, whenever spec.model changes (default: shadow 100% "
        "2m, weight 10% 2m, weight 50% 2m). After the last step the candidate is promoted.",
    )
    analysis: Analysis = Field(
        default_factory=Analysis, description="What is measured and what ends a step or the rollout."
    )
    auto_rollback: bool = Field(
        default=True,
        description="Roll back on a breach. false: the rollout pauses with the breach in "
        "status until the annotation kubeforge.io/rollout=promote or =abort.",
    )
    paused: bool = Field(
        default=False,
        description="Hold the current step (analysis still runs, a breach still rolls back).",
    )
    gateway_ref: GatewayRef | None = Field(
        default=None,
        description="With the Gateway API installed: an HTTPRoute named after the "
        "ModelDeployment, attached to this Gateway, carries the exact weight of each step "
        "(weighted backendRefs to the stable and candidate Services) instead of replica counts.",
    )

    @model_validator(mode="after")
    def _steps(self) -> Rollout:
        if self.strategy != "Canary" and self.steps:
            raise ValueError("steps need strategy Canary")
        return self

    def canary_steps(self) -> list[RolloutStep]:
        return list(self.steps) if self.steps else default_steps()


RolloutPhase = Literal["Progressing", "Paused", "Promoted", "RolledBack"]


class RolloutModel(KubeModel):
    uri: str | None = Field(default=None, description="Model URI.")
    sha256: str | None = Field(default=None, description="SHA-256 of the model file, when known.")


class AnalysisFigures(KubeModel):
    """What the last analysis measured over the current step."""

    requests: int = Field(default=0, description="Requests the candidate answered in the step.")
    errors: int = Field(default=0, description="Of those, 5xx answers.")
    error_rate: float | None = Field(default=None, description="errors / requests.")
    mirrored: int = Field(default=0, description="Mirrored requests compared (or failed).")
    agreed: int = Field(default=0, description="Mirrored requests whose outputs agreed.")
    agreement: float | None = Field(default=None, description="agreed / compared.")
    dropped: int = Field(default=0, description="Copies the stable servers dropped (queue full).")
    candidate_p99_ms: float | None = Field(default=None, description="Candidate p99 latency, ms.")
    stable_p99_ms: float | None = Field(default=None, description="Stable p99 latency, ms.")
    latency_ratio: float | None = Field(default=None, description="candidate / stable p99.")
    verdict: str = Field(default="", description="Continue, Wait, Promote or Rollback.")
    message: str = Field(default="", description="Why.")
    time: str | None = Field(default=None, description="When it was measured.")


class RolloutStatus(KubeModel):
    phase: RolloutPhase = Field(description="Progressing, Paused, Promoted or RolledBack.")
    step: int = Field(default=0, description="Index of the current step (0-based).")
    steps: int = Field(default=0, description="Number of steps.")
    step_started_at: str | None = Field(default=None, description="When the current step began.")
    weight: int = Field(default=0, description="Percent of requests the candidate answers.")
    shadow: int = Field(default=0, description="Percent of stable answers mirrored.")
    stable: RolloutModel = Field(default_factory=RolloutModel, description="The serving model.")
    candidate: RolloutModel = Field(default_factory=RolloutModel, description="The new model.")
    analysis: AnalysisFigures | None = Field(default=None, description="The last analysis.")
    started_at: str | None = Field(default=None, description="When the rollout began.")
    finished_at: str | None = Field(
        default=None, description="When it was promoted or rolled back."
    )
    reason: str = Field(default="", description="Why it was rolled back or paused.")
    message: str = Field(default="", description="What it is doing.")

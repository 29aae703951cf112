"""Status conditions (the metav1.Condition shape) shared by the three kinds."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field

from kubeforge.api._base import KubeModel


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(KubeModel):
    """A standard Kubernetes condition (metav1.Condition)."""

    type: str = Field(description="Type of the condition, e.g. Running, Succeeded, Ready.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        default="", description="A CamelCase machine-readable reason for the last transition."
    )
    message: str = Field(default="", description="A human-readable message with details.")
    last_transition_time: str | None = Field(
        default=None,
        description="When the status last changed (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the condition was computed from."
    )


def conditions_field() -> Any:
    return Field(
        default_factory=list,
        description="The latest available observations of the object's state.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )

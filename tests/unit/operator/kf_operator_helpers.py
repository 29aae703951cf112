"""Shared fixtures for operator unit tests (no cluster)."""

from __future__ import annotations

import copy
from typing import Any

from kubeforge.api.trainingjob import TrainingJobSpec
from kubeforge.settings import Settings

SETTINGS = Settings()

BASE_SPEC: dict[str, Any] = {
    "model": {"recipe": "mlp-classifier"},
    "dataset": {"uri": "builtin://digits"},
    "hyperparameters": {"lr": 0.01, "epochs": 10, "batch_size": 64},
}


def tj(spec: dict[str, Any] | None = None, name: str = "digits", status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "ml", "uid": "uid-1", "generation": 1},
        "spec": copy.deepcopy(spec if spec is not None else BASE_SPEC),
        "status": status or {},
    }


def parsed(obj: dict[str, Any]) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(obj["spec"])


def with_spec(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE_SPEC)
    spec.update(changes)
    return spec

"""Helpers shared by the TrainingJob integration tests (a module of its own: test modules are
not imported by other test modules, whose names may repeat across suites)."""

from __future__ import annotations

from typing import Any

import yaml

RESULT = {"metrics": {"accuracy": 0.97, "val_loss": 0.08},
          "artifacts": {"model": "file:///out/model.onnx", "checkpoint": "file:///out/ckpt.pt",
                        "sha256": "ab" * 32, "bytes": 2048}}


def trainingjob(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"recipe": "mlp-classifier"},
        "dataset": {"uri": "builtin://digits"},
        "hyperparameters": {"lr": 0.01, "epochs": 2},
        "resources": {"cpu": "100m", "memory": "128Mi", "shmSize": "64Mi"},
    }
    base.update(spec)
    return {"apiVersion": "kubeforge.io/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name}, "spec": base}


def apply(kubectl: Any, namespace: str, obj: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))


def get_tj(kube: Any, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = kube.get(f"/apis/kubeforge.io/v1alpha1/namespaces/{namespace}/trainingjobs/{name}")
    return result


def wait_phase(kube: Any, namespace: str, name: str, phase: str, timeout: float = 30) -> dict[str, Any]:
    result: dict[str, Any] = kube.wait_for(
        f"TrainingJob {name} phase {phase}",
        lambda: (o := get_tj(kube, namespace, name)).get("status", {}).get("phase") == phase and o,
        timeout=timeout,
    )
    return result

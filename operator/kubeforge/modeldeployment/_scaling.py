"""The children beside the server Deployment: its Service, its autoscaler (HPA or KEDA
ScaledObject) and its PodDisruptionBudget."""

from __future__ import annotations

from typing import Any

from kubeforge.api.modeldeployment import ModelDeploymentSpec
from kubeforge.modeldeployment import autoscaling as scaling
from kubeforge.modeldeployment._children import (
    GRPC_PORT,
    HTTP_PORT,
    Child,
    child_meta,
    hashed_child,
    selector,
)
from kubeforge.settings import Settings

JSON = dict[str, Any]


def build_service(md: JSON, settings: Settings) -> Child:
    name = md["metadata"]["name"]
    manifest: JSON = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_meta(md, settings),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(settings, name),
            "ports": [
                {
                    "name": "http",
                    "port": HTTP_PORT,
                    "targetPort": "http",
                    "protocol": "TCP",
                    "appProtocol": "http",
                },
                {
                    "name": "grpc",
                    "port": GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "kubernetes.io/h2c",
                },
            ],
        },
    }
    return hashed_child(manifest, settings)


def build_hpa(md: JSON, spec: ModelDeploymentSpec, settings: Settings) -> Child | None:
    """autoscaling/v2 HPA for metric cpu or memory (see `autoscaling.hpa_spec`); None without
    autoscaling or when KEDA scales (concurrency, rps)."""
    a = spec.autoscaling
    if a is None or a.uses_keda:
        return None
    meta = child_meta(md, settings)
    meta["annotations"] = dict(scaling.KEDA_SKIP_HPA_CHECK)
    manifest: JSON = {
        "apiVersion": scaling.HPA_API_VERSION,
        "kind": scaling.HPA,
        "metadata": meta,
        "spec": scaling.hpa_spec(
            a, md["metadata"]["name"], inflight_target=settings.serving_inflight_target
        ),
    }
    return hashed_child(manifest, settings)


def build_scaled_object(md: JSON, spec: ModelDeploymentSpec, settings: Settings) -> Child | None:
    """KEDA ScaledObject for metric concurrency or rps (see `autoscaling.scaled_object_spec`)."""
    a = spec.autoscaling
    if a is None or not a.uses_keda:
        return None
    meta = md["metadata"]
    manifest: JSON = {
        "apiVersion": scaling.KEDA_GROUP_VERSION,
        "kind": scaling.SCALED_OBJECT,
        "metadata": child_meta(md, settings),
        "spec": scaling.scaled_object_spec(
            a,
            meta["name"],
            meta["namespace"],
            scaling.prometheus_address(a, settings.prometheus_url),
        ),
    }
    return hashed_child(manifest, settings)


def promised_replicas(spec: ModelDeploymentSpec) -> int:
    """The fewest replicas the spec promises (minReplicas when autoscaling)."""
    return spec.autoscaling.min_replicas if spec.autoscaling else spec.replicas


def build_pdb(md: JSON, spec: ModelDeploymentSpec, settings: Settings) -> Child | None:
    """maxUnavailable 1 when more than one replica is promised: voluntary evictions (node
    drains) take one replica at a time, never the last one."""
    if promised_replicas(spec) <= 1:
        return None
    name = md["metadata"]["name"]
    manifest: JSON = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": child_meta(md, settings),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector(settings, name)},
            # pods that are not ready (crash-looping, loading) may be evicted freely
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
    return hashed_child(manifest, settings)

"""The server Deployment: the kubeforge-server container (arguments, probes, drain) and its pod."""

from __future__ import annotations

from typing import Any

from kubeforge.api.modeldeployment import ModelDeploymentSpec
from kubeforge.modeldeployment._children import (
    GRPC_PORT,
    HTTP_PORT,
    Child,
    child_meta,
    hashed_child,
    labels,
    number_text,
    selector,
)
from kubeforge.pod import container_resources, pod_parts, scheduling_fields
from kubeforge.settings import Settings

JSON = dict[str, Any]

CONTAINER = "server"
"""Name of the server container (the status function reads its container status)."""

TERMINATION_LOG = "/dev/termination-log"
TMP_DIR = "/tmp"
"""The only writable path of the server container (read-only root filesystem): the model cache
of remote URIs and the TensorRT engine cache live here."""

PRESTOP_SLEEP_SECONDS = 5
"""preStop sleep: endpoints stop routing to the pod before SIGTERM starts the server's drain."""
DRAIN_SECONDS = 25
"""The server's drain after SIGTERM (not ready, finish in-flight requests, then exit)."""
TERMINATION_GRACE_SECONDS = PRESTOP_SLEEP_SECONDS + DRAIN_SECONDS + 10

STARTUP_PERIOD_SECONDS = 5
STARTUP_BUDGET_SECONDS = {"cpu": 600, "cuda": 900, "tensorrt": 1800}
"""How long a replica may take to start (download + load + warm; TensorRT builds engines)."""

def server_args(spec: ModelDeploymentSpec, name: str, model_uri: str) -> list[str]:
    """`kubeforge-server` arguments (the served model's name is the ModelDeployment's name)."""
    b = spec.runtime.batching
    return [
        "--model",
        model_uri,
        "--name",
        name,
        "--http-port",
        str(HTTP_PORT),
        "--grpc-port",
        str(GRPC_PORT),
        "--max-batch-size",
        str(b.max_batch_size),
        "--max-delay-ms",
        number_text(b.max_delay_ms),
        "--drain-seconds",
        str(DRAIN_SECONDS),
        *limit_args(spec),
    ]


def limit_args(spec: ModelDeploymentSpec) -> list[str]:
    """runtime.limits as kubeforge-server flags (field max_queue → --max-queue; *_seconds drop
    the unit: the flags take seconds)."""
    args: list[str] = []
    limits = spec.runtime.limits
    for name in type(limits).model_fields:
        flag = name.removesuffix("_seconds").replace("_", "-").replace("keep-alive", "keepalive")
        args += ["--" + flag, number_text(getattr(limits, name))]
    return args


def server_image(spec: ModelDeploymentSpec, settings: Settings) -> str:
    if spec.runtime.image:
        return spec.runtime.image
    return settings.server_gpu_image if spec.resources.gpus > 0 else settings.server_image


def _probe(path: str, period: int, failures: int, timeout: int = 2) -> JSON:
    return {
        "httpGet": {"path": path, "port": "http", "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
        "successThreshold": 1,
    }


def probes(spec: ModelDeploymentSpec) -> JSON:
    """startup (slow loads, per provider) → liveness on /live; readiness = loaded and warmed."""
    budget = STARTUP_BUDGET_SECONDS[spec.runtime.execution_provider]
    return {
        "startupProbe": _probe(
            "/v2/health/live", STARTUP_PERIOD_SECONDS, budget // STARTUP_PERIOD_SECONDS
        ),
        "livenessProbe": _probe("/v2/health/live", 10, 3, timeout=5),
        "readinessProbe": _probe("/v2/health/ready", 5, 2),
    }


def build_deployment(
    md: JSON,
    spec: ModelDeploymentSpec,
    settings: Settings,
    model_uri: str,
    *,
    keep_replicas: int | None = None,
) -> Child:
    """The server Deployment.

    `spec.replicas` is left out of the apply when autoscaling owns it (the HPA scales it), except
    for `keep_replicas`: the live count, re-applied while our field manager still owns the field
    (switching from fixed replicas to autoscaling), so dropping it from the apply does not reset
    the Deployment to 1 replica before the HPA has taken it over.
    """
    name = md["metadata"]["name"]
    res = spec.resources
    gpus = res.gpus
    env: list[JSON] = [
        {"name": "KUBEFORGE_EXECUTION_PROVIDER", "value": spec.runtime.execution_provider},
        {"name": "KUBEFORGE_INTRA_OP_THREADS", "value": str(spec.runtime.intra_op_threads)},
        {"name": "KUBEFORGE_TERMINATION_LOG", "value": TERMINATION_LOG},
    ]
    if not any(e.name == "HOME" for e in spec.pod.env):
        env.append({"name": "HOME", "value": TMP_DIR})  # fsspec/cloud SDK caches: root is read-only
    parts = pod_parts(
        spec.pod,
        own_labels=labels(settings, name),
        default_service_account="default",
        env=env,
        inputs=[(model_uri, spec.model.secret_ref)],
    )
    parts.volumes.append({"name": "kubeforge-tmp", "emptyDir": {}})
    parts.volume_mounts.append({"name": "kubeforge-tmp", "mountPath": TMP_DIR})

    container = parts.container(CONTAINER, server_image(spec, settings))
    container["securityContext"] = {**container["securityContext"], "readOnlyRootFilesystem": True}
    container["command"] = ["kubeforge-server"]
    container["args"] = server_args(spec, name, model_uri)
    container["ports"] = [
        {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
        {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
    ]
    container["resources"] = container_resources(res, gpus)
    container.update(probes(spec))
    container["lifecycle"] = {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}}
    container["terminationMessagePath"] = TERMINATION_LOG
    container["terminationMessagePolicy"] = "FallbackToLogsOnError"

    pod_spec: JSON = {
        **parts.pod_spec(),
        "automountServiceAccountToken": False,  # the server never calls the API server
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "containers": [container],
        "volumes": parts.volumes,
        **scheduling_fields(spec.scheduling, gpus=gpus, gpu_resource=res.gpu_resource),
    }
    template_meta: JSON = {"labels": parts.labels}
    if parts.annotations:
        template_meta["annotations"] = parts.annotations

    budget = STARTUP_BUDGET_SECONDS[spec.runtime.execution_provider]
    dep_spec: JSON = {
        "selector": {"matchLabels": selector(settings, name)},
        "strategy": {
            "type": "RollingUpdate",
            # a new replica must be ready before an old one goes: the ready count never drops
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
        },
        "revisionHistoryLimit": 5,
        "progressDeadlineSeconds": budget + 120,
        "template": {"metadata": template_meta, "spec": pod_spec},
    }
    if spec.autoscaling is None:
        dep_spec["replicas"] = spec.replicas
    elif keep_replicas is not None:
        a = spec.autoscaling
        dep_spec["replicas"] = min(max(keep_replicas, a.min_replicas), a.max_replicas)
    manifest: JSON = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_meta(md, settings),
        "spec": dep_spec,
    }
    return hashed_child(manifest, settings)

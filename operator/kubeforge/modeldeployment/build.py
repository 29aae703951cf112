"""ModelDeployment (+ the resolved model URI) → desired children (pure).

Children, all named after the ModelDeployment and owned by it (deletion cascades):
Deployment (the ONNX Runtime server), Service (HTTP 8080 + gRPC 8081), HorizontalPodAutoscaler
(autoscaling/v2, with `spec.autoscaling` on cpu/memory) or KEDA ScaledObject (on concurrency/rps;
see `autoscaling.py`), PodDisruptionBudget (only when more than one
replica is promised), and, only when the Prometheus Operator's CRDs exist, ServiceMonitor and
PrometheusRule. The pod template comes from the shared `kubeforge.pod` builder, so `spec.pod`,
pvc:// mounts, `secretRef` (envFrom) and Pod Security `restricted` are the same as TrainingJob's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubeforge.api.modeldeployment import ModelDeploymentSpec
from kubeforge.apply import manifest_hash
from kubeforge.modeldeployment import autoscaling as scaling
from kubeforge.pod import container_resources, pod_parts, scheduling_fields
from kubeforge.settings import Settings

JSON = dict[str, Any]

KIND = "ModelDeployment"
API_VERSION = "kubeforge.io/v1alpha1"
CONTAINER = "server"
"""Name of the server container (the status function reads its container status)."""

HTTP_PORT = 8080
GRPC_PORT = 8081
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

MONITORING_GROUP = "monitoring.coreos.com/v1"
SPEC_HASH = "spec-hash"


@dataclass(frozen=True)
class Child:
    """One desired child: its apply configuration and the hash stored on it."""

    manifest: JSON
    hash: str

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def api_version(self) -> str:
        return str(self.manifest["apiVersion"])


@dataclass(frozen=True)
class Desired:
    """What a ModelDeployment should have. `deployment` is None while no model can be served."""

    service: Child
    deployment: Child | None = None
    hpa: Child | None = None
    scaled_object: Child | None = None
    pdb: Child | None = None
    service_monitor: Child | None = None
    prometheus_rule: Child | None = None
    absent: list[tuple[str, str]] = field(default_factory=list)
    """(apiVersion, kind) of optional children that must not exist (to delete if present)."""

    def children(self) -> list[Child]:
        """Every child to apply, Service first (the URL is stable from the start)."""
        return [
            c
            for c in (
                self.service,
                self.deployment,
                self.scaled_object,  # before the HPA's deletion (in absent): never neither
                self.hpa,
                self.pdb,
                self.service_monitor,
                self.prometheus_rule,
            )
            if c is not None
        ]


def labels(settings: Settings, name: str) -> dict[str, str]:
    """kubeforge's labels on every child of ModelDeployment `name` (and on its pods)."""
    return {
        settings.label("modeldeployment"): name,
        settings.label("kind"): KIND,
        "app.kubernetes.io/managed-by": settings.field_manager,
    }


def selector(settings: Settings, name: str) -> dict[str, str]:
    """The pods' selector (immutable on a Deployment: never add keys to it)."""
    return {settings.label("modeldeployment"): name, settings.label("kind"): KIND}


def owner_reference(md: JSON) -> JSON:
    meta = md["metadata"]
    return {
        "apiVersion": md.get("apiVersion", API_VERSION),
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def url(name: str, namespace: str) -> str:
    """The in-cluster inference URL (KServe v2 paths below it: /infer, /ready, metadata)."""
    return f"http://{name}.{namespace}.svc.cluster.local:{HTTP_PORT}/v2/models/{name}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


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
        _number(b.max_delay_ms),
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
        args += ["--" + flag, _number(getattr(limits, name))]
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


def _child(manifest: JSON, settings: Settings) -> Child:
    digest = manifest_hash(manifest)
    manifest["metadata"].setdefault("annotations", {})[settings.label(SPEC_HASH)] = digest
    return Child(manifest, digest)


def _meta(md: JSON, settings: Settings) -> JSON:
    meta = md["metadata"]
    return {
        "name": meta["name"],
        "namespace": meta["namespace"],
        "labels": labels(settings, meta["name"]),
        "ownerReferences": [owner_reference(md)],
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
        "metadata": _meta(md, settings),
        "spec": dep_spec,
    }
    return _child(manifest, settings)


def build_service(md: JSON, settings: Settings) -> Child:
    name = md["metadata"]["name"]
    manifest: JSON = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(md, settings),
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
    return _child(manifest, settings)


def build_hpa(md: JSON, spec: ModelDeploymentSpec, settings: Settings) -> Child | None:
    """autoscaling/v2 HPA for metric cpu or memory (see `autoscaling.hpa_spec`); None without
    autoscaling or when KEDA scales (concurrency, rps)."""
    a = spec.autoscaling
    if a is None or a.uses_keda:
        return None
    meta = _meta(md, settings)
    meta["annotations"] = dict(scaling.KEDA_SKIP_HPA_CHECK)
    manifest: JSON = {
        "apiVersion": scaling.HPA_API_VERSION,
        "kind": scaling.HPA,
        "metadata": meta,
        "spec": scaling.hpa_spec(
            a, md["metadata"]["name"], inflight_target=settings.serving_inflight_target
        ),
    }
    return _child(manifest, settings)


def build_scaled_object(md: JSON, spec: ModelDeploymentSpec, settings: Settings) -> Child | None:
    """KEDA ScaledObject for metric concurrency or rps (see `autoscaling.scaled_object_spec`)."""
    a = spec.autoscaling
    if a is None or not a.uses_keda:
        return None
    meta = md["metadata"]
    manifest: JSON = {
        "apiVersion": scaling.KEDA_GROUP_VERSION,
        "kind": scaling.SCALED_OBJECT,
        "metadata": _meta(md, settings),
        "spec": scaling.scaled_object_spec(
            a,
            meta["name"],
            meta["namespace"],
            scaling.prometheus_address(a, settings.prometheus_url),
        ),
    }
    return _child(manifest, settings)


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
        "metadata": _meta(md, settings),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector(settings, name)},
            # pods that are not ready (crash-looping, loading) may be evicted freely
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
    return _child(manifest, settings)


def build_service_monitor(md: JSON, settings: Settings) -> Child:
    name = md["metadata"]["name"]
    manifest: JSON = {
        "apiVersion": MONITORING_GROUP,
        "kind": "ServiceMonitor",
        "metadata": _meta(md, settings),
        "spec": {
            "selector": {"matchLabels": selector(settings, name)},
            "endpoints": [
                {"port": "http", "path": "/metrics", "interval": "30s", "scheme": "http"}
            ],
        },
    }
    return _child(manifest, settings)


def alert_rules(name: str, namespace: str, spec: ModelDeploymentSpec) -> list[JSON]:
    """The alerts of one ModelDeployment (metric names from kubeforge_server.metrics)."""
    m = spec.monitoring
    sel = f'namespace="{namespace}",model="{name}"'
    dep = f'namespace="{namespace}",deployment="{name}"'
    labels_ = {"severity": "warning", "modeldeployment": name}
    threshold_s = _number(m.latency_p99_ms / 1000)
    return [
        {
            "alert": "KubeforgeModelHighErrorRate",
            "expr": (
                f'sum(rate(kubeforge_server_requests_total{{{sel},code=~"5.."}}[5m]))'
                f" / sum(rate(kubeforge_server_requests_total{{{sel}}}[5m]))"
                f" > {_number(m.error_rate_threshold)}"
            ),
            "for": "5m",
            "labels": {**labels_, "severity": "critical"},
            "annotations": {
                "summary": f"Model {namespace}/{name}: high error rate",
                "description": (
                    "{{ $value | humanizePercentage }} of requests to model "
                    f"{namespace}/{name} failed with a 5xx over the last 5 minutes "
                    f"(threshold {_number(m.error_rate_threshold * 100)}%)."
                ),
            },
        },
        {
            "alert": "KubeforgeModelHighLatency",
            "expr": (
                "histogram_quantile(0.99, sum by (le) ("
                f"rate(kubeforge_server_request_duration_seconds_bucket{{{sel}}}[5m])))"
                f" > {threshold_s}"
            ),
            "for": "10m",
            "labels": labels_,
            "annotations": {
                "summary": f"Model {namespace}/{name}: high p99 latency",
                "description": (
                    "p99 latency of model "
                    f"{namespace}/{name} is {{{{ $value | humanizeDuration }}}} "
                    f"(threshold {threshold_s}s)."
                ),
            },
        },
        {
            "alert": "KubeforgeModelReplicasNotReady",
            # kube-state-metrics (part of kube-prometheus-stack) reports the Deployment
            "expr": (
                f"kube_deployment_spec_replicas{{{dep}}}"
                f" - kube_deployment_status_replicas_available{{{dep}}} > 0"
            ),
            "for": "10m",
            "labels": labels_,
            "annotations": {
                "summary": f"Model {namespace}/{name}: replicas not ready",
                "description": (
                    f"{{{{ $value }}}} replica(s) of model {namespace}/{name} have not been "
                    "ready for 10 minutes (crash loop, load failure or no room to schedule): "
                    f"kubectl describe modeldeployment -n {namespace} {name}"
                ),
            },
        },
    ]


def build_prometheus_rule(md: JSON, spec: ModelDeploymentSpec, settings: Settings) -> Child:
    meta = md["metadata"]
    manifest: JSON = {
        "apiVersion": MONITORING_GROUP,
        "kind": "PrometheusRule",
        "metadata": _meta(md, settings),
        "spec": {
            "groups": [
                {
                    "name": f"kubeforge-modeldeployment-{meta['namespace']}-{meta['name']}",
                    "rules": alert_rules(meta["name"], meta["namespace"], spec),
                }
            ]
        },
    }
    return _child(manifest, settings)


def build(
    md: JSON,
    spec: ModelDeploymentSpec,
    settings: Settings,
    model_uri: str | None,
    *,
    monitoring_crds: bool = False,
    keep_replicas: int | None = None,
    keda_crds: bool = False,
) -> Desired:
    """ModelDeployment (`md` = the object, `spec` = its validated spec) → desired children.

    - `model_uri`: the resolved model (None: nothing to serve yet; the Deployment, HPA and PDB
      are then left as they are: a new model is rolled out only once it exists).
    - `monitoring_crds`: the Prometheus Operator's CRDs are installed (discovery).
    - `keda_crds`: KEDA's ScaledObject is served; when it is not, a concurrency/rps spec makes
      no ScaledObject and keeps whatever HPA exists (never a moment with no autoscaler).
    """
    absent: list[tuple[str, str]] = []
    deployment = hpa = pdb = scaled_object = None
    if model_uri is not None:
        deployment = build_deployment(md, spec, settings, model_uri, keep_replicas=keep_replicas)
        hpa = build_hpa(md, spec, settings)
        pdb = build_pdb(md, spec, settings)
        a = spec.autoscaling
        keda_waits = a is not None and a.uses_keda and not keda_crds
        if not keda_waits:
            scaled_object = build_scaled_object(md, spec, settings)
        # the new autoscaler is applied (children()) before the old one is deleted (absent)
        if hpa is None and not keda_waits:
            absent.append((scaling.HPA_API_VERSION, scaling.HPA))
        if scaled_object is None and keda_crds:  # none can exist where KEDA is not served
            absent.append((scaling.KEDA_GROUP_VERSION, scaling.SCALED_OBJECT))
        if pdb is None:
            absent.append(("policy/v1", "PodDisruptionBudget"))
    sm = pr = None
    if monitoring_crds:
        if spec.monitoring.service_monitor:
            sm = build_service_monitor(md, settings)
        else:
            absent.append((MONITORING_GROUP, "ServiceMonitor"))
        if spec.monitoring.prometheus_rule:
            pr = build_prometheus_rule(md, spec, settings)
        else:
            absent.append((MONITORING_GROUP, "PrometheusRule"))
    return Desired(
        service=build_service(md, settings),
        deployment=deployment,
        hpa=hpa,
        scaled_object=scaled_object,
        pdb=pdb,
        service_monitor=sm,
        prometheus_rule=pr,
        absent=absent,
    )

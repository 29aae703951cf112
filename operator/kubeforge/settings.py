"""The operator's settings, in one place.

Every setting is read from an environment variable `KUBEFORGE_<NAME>` (upper case), so the Helm
chart sets them with `env:`; the command line (`--namespace`, `--metrics-port`) overrides a few.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_TRAINER_IMAGE = "ghcr.io/kubeforge/trainer:0.1.0"
DEFAULT_SERVER_IMAGE = "ghcr.io/kubeforge/server:0.1.0"


@dataclass(frozen=True)
class Settings:
    """Typed operator settings (env `KUBEFORGE_*`)."""

    trainer_image: str = DEFAULT_TRAINER_IMAGE
    """Image of the built-in trainer (CPU); also the source of the kubeforge-report zipapp."""

    trainer_gpu_image: str = "ghcr.io/kubeforge/trainer-gpu:0.1.0"
    """Image of the built-in trainer used when a TrainingJob asks for GPUs."""

    server_image: str = DEFAULT_SERVER_IMAGE
    """Image of the ONNX Runtime server (CPU execution provider)."""

    server_gpu_image: str = "ghcr.io/kubeforge/server-gpu:0.1.0"
    """Image of the server used with the cuda / tensorrt execution providers."""

    artifact_store: str = "file:///var/lib/kubeforge/artifacts"
    """Where artefacts go when `spec.output.uri` is empty: `<store>/<namespace>/<name>/`.

    The default (file://) is pod-local (an emptyDir is mounted there so it is writable): it works
    on any cluster for a first run, but the model is lost with the pod. Production installs set
    a shared store, e.g. `pvc://kubeforge-artifacts/` (mounted read-write for the trainer) or
    `s3://bucket/kubeforge/` (credentials through `spec.output.secretRef` or the pod identity)."""

    namespaces: tuple[str, ...] = ()
    """Namespaces watched; empty: all namespaces (cluster-wide)."""

    concurrency: int = 16
    """Objects reconciled at once, per kind (and idle HTTP connections kept to the API
    server)."""

    resync_seconds: float = 300.0
    """Period of the safety-net resync of every object (it writes only what differs)."""

    field_manager: str = "kubeforge"
    """Server-side apply field manager (and the user agent) of every write."""

    prefix: str = "kubeforge.io"
    """Annotation/label prefix of kubeforge and of kopf's own bookkeeping."""

    trainer_service_account: str = "default"
    """ServiceAccount of training pods without `spec.pod.serviceAccountName` (it must exist; the
    operator creates none and grants none: the progress channel needs no RBAC)."""

    progress_port: int = 8443
    """Port of the progress endpoint (HTTPS; 0: off). Served only with a certificate."""

    progress_address: str = "127.0.0.1"
    """Bind address of the progress endpoint (the chart sets 0.0.0.0 in a pod)."""

    progress_cert_file: str = ""
    """PEM certificate of the progress endpoint (reloaded when the file changes)."""

    progress_key_file: str = ""
    """PEM private key of that certificate."""

    progress_ca_file: str = ""
    """PEM CA that signed the certificate; training pods get its content (`KUBEFORGE_PROGRESS_CA`)
    to verify the endpoint."""

    progress_url: str = ""
    """Base URL training pods reach the endpoint at (the chart: its Service,
    `https://NAME.NAMESPACE.svc:PORT`); empty: pods get no progress channel."""

    progress_audience: str = "kubeforge.io/progress"
    """Audience of the projected token training pods present (no other API accepts it)."""

    progress_token_seconds: int = 600
    """Lifetime of that token (the kubelet renews it at 80%; 600 is the API's minimum)."""

    progress_max_body: int = 16384
    """Largest progress report accepted, in bytes (413 above)."""

    progress_rate: float = 2.0
    """Reports a second a pod may send on average (429 above) ..."""

    progress_burst: float = 10.0
    """... and at once."""

    cleanup_legacy_rbac: bool = True
    """Delete at start-up the Roles/RoleBindings older versions made for the progress channel."""

    termination_grace_seconds: int = 120
    """Grace period of trainer pods: time to write a checkpoint after SIGTERM."""

    master_port: int = 29500
    """torchrun rendezvous port on pod 0."""

    metrics_port: int = 8000
    """Port of the operator's Prometheus /metrics endpoint (0: off)."""

    metrics_address: str = "127.0.0.1"
    """Bind address of /metrics and the liveness endpoint (the chart sets 0.0.0.0 in a pod)."""

    liveness_port: int = 8080
    """Port of the liveness endpoint `/healthz` (0: off)."""

    readiness_port: int = 0
    """Port of the readiness endpoint `/readyz` (`kubeforge.health`; 0: off; the chart sets
    8081)."""
    log_format: str = "json"
    """`json` (structured logs, one object a line) or `plain`."""

    log_level: str = "INFO"
    """Python log level of the operator."""

    leader_election: bool = False
    """Reconcile only while holding the `coordination.k8s.io` Lease `lease_name` (several
    replicas: one reconciles, the others keep their watches and indexes warm and take over
    within `lease_seconds` + `renew_seconds` of its end). Off: this replica reconciles."""
    lease_name: str = "kubeforge-operator"
    lease_namespace: str = "default"
    """Namespace of the Lease (the chart sets the release's namespace)."""
    lease_seconds: float = 15.0
    """How long a Lease holder that stopped renewing still counts as the leader."""
    renew_seconds: float = 4.0
    """How often the leader renews its Lease (and a standby looks at it)."""
    kueue_workloads: bool = True
    """Watch Kueue Workloads (when the CRD exists) to show Kueue's reason while a job is queued."""

    serving_inflight_target: float = 0.0
    """Per-replica target of in-flight requests (`kubeforge_server_inflight_requests`) added as a
    Pods metric to every autoscaled ModelDeployment's HPA. Needs a custom-metrics adapter (e.g.
    prometheus-adapter) serving that metric; 0 (the default): off, so clusters without an adapter
    show no FailedGetPodsMetric errors on the HPA."""

    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    """Prometheus that KEDA's trigger queries for ModelDeployments autoscaled on concurrency or
    rps (`spec.autoscaling.prometheusAddress` overrides it per object). The default is the
    Service kube-prometheus-stack makes when installed in the namespace `monitoring`."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from `KUBEFORGE_*` variables, then keyword overrides (non-None only)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get("KUBEFORGE_" + f.name.upper())
            if raw is None or raw == "":
                continue
            default = f.default
            if isinstance(default, bool):
                values[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
            elif isinstance(default, int):
                values[f.name] = int(raw)
            elif isinstance(default, float):
                values[f.name] = float(raw)
            elif isinstance(default, tuple):
                values[f.name] = tuple(s.strip() for s in raw.split(",") if s.strip())
            else:
                values[f.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def output_uri(self, namespace: str, name: str) -> str:
        """The default output URI of a TrainingJob: `<store>/<namespace>/<name>/`."""
        return f"{self.artifact_store.rstrip('/')}/{namespace}/{name}/"

    def label(self, key: str) -> str:
        """`kubeforge.io/<key>`."""
        return f"{self.prefix}/{key}"

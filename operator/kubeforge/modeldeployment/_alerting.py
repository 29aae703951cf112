"""The ServiceMonitor and the PrometheusRule (alerts) of a ModelDeployment, built when the
Prometheus Operator's CRDs exist."""

from __future__ import annotations

from typing import Any

from kubeforge.api.modeldeployment import ModelDeploymentSpec
from kubeforge.modeldeployment._children import (
    Child,
    child_meta,
    hashed_child,
    number_text,
    selector,
)
from kubeforge.settings import Settings

JSON = dict[str, Any]

MONITORING_GROUP = "monitoring.coreos.com/v1"
def build_service_monitor(md: JSON, settings: Settings) -> Child:
    name = md["metadata"]["name"]
    manifest: JSON = {
        "apiVersion": MONITORING_GROUP,
        "kind": "ServiceMonitor",
        "metadata": child_meta(md, settings),
        "spec": {
            "selector": {"matchLabels": selector(settings, name)},
            "endpoints": [
                {"port": "http", "path": "/metrics", "interval": "30s", "scheme": "http"}
            ],
        },
    }
    return hashed_child(manifest, settings)


def alert_rules(name: str, namespace: str, spec: ModelDeploymentSpec) -> list[JSON]:
    """The alerts of one ModelDeployment (metric names from kubeforge_server.metrics)."""
    m = spec.monitoring
    sel = f'namespace="{namespace}",model="{name}"'
    dep = f'namespace="{namespace}",deployment="{name}"'
    labels_ = {"severity": "warning", "modeldeployment": name}
    threshold_s = number_text(m.latency_p99_ms / 1000)
    return [
        {
            "alert": "KubeforgeModelHighErrorRate",
            "expr": (
                f'sum(rate(kubeforge_server_requests_total{{{sel},code=~"5.."}}[5m]))'
                f" / sum(rate(kubeforge_server_requests_total{{{sel}}}[5m]))"
                f" > {number_text(m.error_rate_threshold)}"
            ),
            "for": "5m",
            "labels": {**labels_, "severity": "critical"},
            "annotations": {
                "summary": f"Model {namespace}/{name}: high error rate",
                "description": (
                    "{{ $value | humanizePercentage }} of requests to model "
                    f"{namespace}/{name} failed with a 5xx over the last 5 minutes "
                    f"(threshold {number_text(m.error_rate_threshold * 100)}%)."
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
        "metadata": child_meta(md, settings),
        "spec": {
            "groups": [
                {
                    "name": f"kubeforge-modeldeployment-{meta['namespace']}-{meta['name']}",
                    "rules": alert_rules(meta["name"], meta["namespace"], spec),
                }
            ]
        },
    }
    return hashed_child(manifest, settings)

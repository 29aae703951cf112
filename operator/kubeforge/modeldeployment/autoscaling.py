"""ModelDeployment autoscaling (pure): the HorizontalPodAutoscaler (cpu, memory) or the KEDA
ScaledObject (concurrency, rps) that scales the server Deployment, and the autoscaler's view in
the status.

One of the two exists at a time. Switching metric applies the new one before the old one is
deleted (`build.Desired.children()` are applied before `Desired.absent` is deleted), so there is
never a moment with neither: at worst, for one HPA sync, two HPAs select the same pods and the
HPA controller holds the count where it is (AmbiguousSelector) until the old one is gone.

KEDA turns a ScaledObject into an HPA of its own, `keda-hpa-<name>`, with an External metric
served by KEDA's metrics API server (the aggregated API `v1beta1.external.metrics.k8s.io`), and
copies the ScaledObject's labels onto it. So both paths end in an HPA that carries the
ModelDeployment's label, and the status reads the same fields from either: desired and current
replicas, the metric's current value, the last scale time, and why it cannot scale.

The concurrency/rps trigger is KEDA's `prometheus` scaler reading the servers' own series
(`kubeforge_server_inflight_requests`, `kubeforge_server_requests_total`), summed over the
ModelDeployment's pods; `metricType: AverageValue` makes the HPA divide by the replica count, so
`target` is per replica.
"""

from __future__ import annotations

from typing import Any

from kubeforge.api import Autoscaling
from kubeforge.api._base import parse_quantity
from kubeforge.api._duration import duration_seconds
from kubeforge.apply import AsyncKube
from kubeforge.modeldeployment.monitoring import MonitoringDiscovery

JSON = dict[str, Any]

KEDA_GROUP_VERSION = "keda.sh/v1alpha1"
SCALED_OBJECT = "ScaledObject"
HPA_API_VERSION = "autoscaling/v2"
HPA = "HorizontalPodAutoscaler"
KEDA_HPA_PREFIX = "keda-hpa-"
"""KEDA names the HPA it makes for ScaledObject `x` `keda-hpa-x`."""

KEDA_SKIP_HPA_CHECK = {"validations.keda.sh/hpa-ownership": "false"}
"""On kubeforge's own HPA: KEDA's admission webhook (when installed) refuses a ScaledObject for a
Deployment that another HPA scales, and the switch cpu → concurrency applies the ScaledObject
while the old HPA still exists (deleted right after): this annotation makes the webhook skip it."""

POLLING_INTERVAL_SECONDS = 15
"""How often KEDA's operator polls the trigger (activation; the HPA itself reads the metric every
kube-controller-manager HPA sync, 15 s by default)."""

INFLIGHT_SERIES = "kubeforge_server_inflight_requests"
REQUESTS_SERIES = "kubeforge_server_requests_total"
RATE_WINDOW = "1m"
"""rate() window of the rps query: at least 4 scrapes at Prometheus' usual 15 s interval."""


def prometheus_query(metric: str, namespace: str, name: str) -> str:
    """PromQL for the ModelDeployment's total of `metric` over its pods.

    The label `namespace` is the one the Prometheus Operator (ServiceMonitor) and any
    kubernetes_sd relabelling put on every series; `model` is the server's own label, the served
    model's name (= the ModelDeployment's name)."""
    sel = f'namespace="{namespace}",model="{name}"'
    if metric == "concurrency":
        return f"sum({INFLIGHT_SERIES}{{{sel}}})"
    if metric == "rps":
        return f"sum(rate({REQUESTS_SERIES}{{{sel}}}[{RATE_WINDOW}]))"
    raise ValueError(f"metric {metric!r} is not served by KEDA")


def number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def behavior(a: Autoscaling) -> JSON:
    """autoscaling/v2 `behavior`: the stabilisation windows (scale up fast, down slowly: a model
    replica is expensive to bring back). After the down window, the HPA's default policy applies
    (it may drop to the recommendation at once: the window is what prevents flapping)."""
    return {
        "scaleUp": {"stabilizationWindowSeconds": duration_seconds(a.scale_up_stabilization)},
        "scaleDown": {
            "stabilizationWindowSeconds": duration_seconds(a.scale_down_stabilization)
        },
    }


def hpa_spec(a: Autoscaling, name: str, *, inflight_target: float = 0.0) -> JSON:
    """autoscaling/v2 HPA spec on cpu or memory utilisation (of the requests), plus, when the
    operator's `serving_inflight_target` is set, a Pods metric on the server's in-flight gauge
    (needs a custom-metrics adapter such as prometheus-adapter)."""
    metrics: list[JSON] = [
        {
            "type": "Resource",
            "resource": {
                "name": a.metric,
                "target": {"type": "Utilization", "averageUtilization": int(a.target_value)},
            },
        }
    ]
    if inflight_target > 0:
        metrics.append(
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": INFLIGHT_SERIES},
                    "target": {"type": "AverageValue", "averageValue": number(inflight_target)},
                },
            }
        )
    return {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        "minReplicas": a.min_replicas,
        "maxReplicas": a.max_replicas,
        "metrics": metrics,
        "behavior": behavior(a),
    }


def scaled_object_spec(a: Autoscaling, name: str, namespace: str, prometheus: str) -> JSON:
    """keda.sh/v1alpha1 ScaledObject spec: the prometheus trigger on the servers' series."""
    return {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        "minReplicaCount": a.min_replicas,
        "maxReplicaCount": a.max_replicas,
        "pollingInterval": POLLING_INTERVAL_SECONDS,
        "cooldownPeriod": duration_seconds(a.idle_after),
        "advanced": {
            # the count stays where it is if the ScaledObject is deleted (switching to cpu)
            "restoreToOriginalReplicaCount": False,
            "horizontalPodAutoscalerConfig": {"behavior": behavior(a)},
        },
        "triggers": [
            {
                "type": "prometheus",
                "name": a.metric,
                "metricType": "AverageValue",
                "metadata": {
                    "serverAddress": prometheus,
                    "query": prometheus_query(a.metric, namespace, name),
                    "threshold": number(a.target_value),
                    # no series yet (no request served since start): 0, not an error
                    "ignoreNullValues": "true",
                },
            }
        ],
    }


def prometheus_address(a: Autoscaling, default: str) -> str:
    return a.prometheus_address or default


# --- the status view -------------------------------------------------------------------------


def slim_hpa(body: Any) -> JSON:
    """What the HPA index keeps: name, owners, hash annotation, and the status fields the view
    reads (our HPA and KEDA's carry the ModelDeployment's label alike)."""
    meta = body["metadata"]
    status = body.get("status") or {}
    return {
        "metadata": {
            "name": meta["name"],
            "uid": meta.get("uid"),
            "annotations": dict(meta.get("annotations") or {}),
            "labels": dict(meta.get("labels") or {}),
            "ownerReferences": list(meta.get("ownerReferences") or []),
        },
        "status": {
            k: status[k]
            for k in (
                "currentReplicas",
                "desiredReplicas",
                "currentMetrics",
                "lastScaleTime",
                "conditions",
            )
            if k in status
        },
    }


def scaling_hpa(hpas: list[JSON], name: str, a: Autoscaling) -> JSON | None:
    """The HPA that scales the Deployment for this spec: ours (`name`) for cpu/memory, KEDA's
    (`keda-hpa-<name>`) for concurrency/rps."""
    want = KEDA_HPA_PREFIX + name if a.uses_keda else name
    for h in hpas:
        if h["metadata"]["name"] == want:
            return h
    return None


def own_hpa(hpas: list[JSON], name: str) -> JSON | None:
    """kubeforge's own HPA (named after the ModelDeployment), never KEDA's."""
    for h in hpas:
        if h["metadata"]["name"] == name:
            return h
    return None


def _current_value(hpa_status: JSON) -> float | None:
    """The first metric's current value per replica, in the metric's unit."""
    for m in hpa_status.get("currentMetrics") or []:
        kind = m.get("type")
        if kind == "Resource":
            cur = (m.get("resource") or {}).get("current") or {}
            if cur.get("averageUtilization") is not None:
                return float(cur["averageUtilization"])
        elif kind in ("External", "Pods"):
            cur = (m.get("external" if kind == "External" else "pods") or {}).get("current") or {}
            raw = cur.get("averageValue", cur.get("value"))
            if raw is not None:
                try:
                    return float(parse_quantity(str(raw)))
                except ValueError:
                    return None
    return None


def _cannot_scale(hpa_status: JSON) -> str:
    """The message of a False AbleToScale / ScalingActive condition ('' when it can scale)."""
    for c in hpa_status.get("conditions") or []:
        if c.get("type") in ("AbleToScale", "ScalingActive") and c.get("status") == "False":
            return f"{c.get('reason', '')}: {c.get('message', '')}".strip(": ")
    return ""


def autoscaler_view(
    a: Autoscaling | None, name: str, hpas: list[JSON], *, keda_served: bool = True
) -> JSON | None:
    """spec.autoscaling + the observed HPAs → `status.autoscaling` (None without autoscaling)."""
    if a is None:
        return None
    kind = SCALED_OBJECT if a.uses_keda else HPA
    unit = "%" if a.metric in ("cpu", "memory") else ""
    view: JSON = {"kind": kind, "metric": a.metric, "target": number(a.target_value) + unit}
    if a.uses_keda and not keda_served:
        view["message"] = (
            f"metric {a.metric} needs KEDA (keda.sh/v1alpha1 ScaledObject is not served): "
            "install KEDA (docs/autoscaling.md); the previous autoscaler, if any, is kept"
        )
        view["summary"] = f"{a.metric}: KEDA not installed"
        return view
    hpa = scaling_hpa(hpas, name, a)
    if hpa is None:
        view["message"] = "waiting for the autoscaler" + (
            f" (KEDA makes {KEDA_HPA_PREFIX}{name})" if a.uses_keda else ""
        )
        view["summary"] = f"{a.metric} ?/{view['target']}"
        return view
    st = hpa.get("status") or {}
    value = _current_value(st)
    if value is not None:
        view["currentValue"] = number(round(value, 3)) + unit
    for src, dst in (
        ("desiredReplicas", "desiredReplicas"),
        ("currentReplicas", "currentReplicas"),
        ("lastScaleTime", "lastScaleTime"),
    ):
        if st.get(src) is not None:
            view[dst] = st[src]
    problem = _cannot_scale(st)
    view["ready"] = not problem and bool(st.get("conditions"))
    if problem:
        view["message"] = problem[:512]
    cur = view.get("currentValue", "?")
    replicas = f"{view.get('currentReplicas', '?')}->{view.get('desiredReplicas', '?')}"
    view["summary"] = f"{a.metric} {cur}/{view['target']}, {replicas}"
    return view


# --- is KEDA installed ----------------------------------------------------------------------


def keda_discovery(kube: AsyncKube) -> MonitoringDiscovery:
    """Whether `keda.sh/v1alpha1` scaledobjects are served (discovery, cached, one request at a
    time shared by every reconcile: the same mechanism as the Prometheus Operator's check)."""
    return MonitoringDiscovery(kube, KEDA_GROUP_VERSION, frozenset({"scaledobjects"}))

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

from typing import Any

from kubeforge.api.modeldeployment import ModelDeploymentSpec
from kubeforge.modeldeployment import autoscaling as scaling
from kubeforge.modeldeployment._alerting import (
    MONITORING_GROUP,
    build_prometheus_rule,
    build_service_monitor,
)
from kubeforge.modeldeployment._children import Child, Desired, url
from kubeforge.modeldeployment._deployment import (
    DRAIN_SECONDS,
    PRESTOP_SLEEP_SECONDS,
    build_deployment,
)
from kubeforge.modeldeployment._scaling import (
    build_hpa,
    build_pdb,
    build_scaled_object,
    build_service,
)
from kubeforge.settings import Settings

# Each kind of child is built in a private module (_deployment, _scaling, _alerting; what they
# share in _children); these names stay importable from here for the tests.
__all__ = [
    "DRAIN_SECONDS",
    "PRESTOP_SLEEP_SECONDS",
    "Child",
    "Desired",
    "build",
    "build_deployment",
    "build_prometheus_rule",
    "url",
]

JSON = dict[str, Any]


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

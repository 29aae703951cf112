"""ModelDeployment autoscaling: the HPA / KEDA ScaledObject builders for each metric, switching
metric (the new autoscaler applied before the old one is deleted: never a moment with neither),
and the autoscaler's view in the status (pure, no cluster)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from kubeforge.api._autoscaling import SCALE_TO_ZERO_REFUSAL, Autoscaling
from kubeforge.api.modeldeployment import ModelDeploymentSpec
from kubeforge.apply import ApiError
from kubeforge.context import OperatorContext
from kubeforge.modeldeployment import autoscaling as sc
from kubeforge.modeldeployment import build as b
from kubeforge.modeldeployment.handlers import ModelDeploymentReconciler, Snapshot, slim_md
from kubeforge.settings import Settings
from pydantic import ValidationError

JSON = dict[str, Any]
URI = "s3://bucket/models/digits/"
S = Settings(prometheus_url="http://prom.monitoring.svc:9090")
KEY = ("ml", "digits")


def obj(spec: JSON) -> JSON:
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "digits", "namespace": "ml", "uid": "md-uid", "generation": 1},
        "spec": spec,
    }


def build(autoscaling: JSON | None, **kw: Any) -> b.Desired:
    spec: JSON = {"model": {"uri": URI}}
    if autoscaling is not None:
        spec["autoscaling"] = autoscaling
    return b.build(obj(spec), ModelDeploymentSpec.model_validate(spec), S, URI, **kw)


# --- builders, one per metric -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "query", "threshold"),
    [
        ("concurrency", 'sum(kubeforge_server_inflight_requests{namespace="ml",model="digits"})',
         "8"),
        ("rps",
         'sum(rate(kubeforge_server_requests_total{namespace="ml",model="digits"}[1m]))', "50"),
    ],
)
def test_request_metrics_make_a_scaled_object_not_an_hpa(
    metric: str, query: str, threshold: str
) -> None:
    d = build({"metric": metric, "minReplicas": 2, "maxReplicas": 7}, keda_crds=True)
    assert d.hpa is None and d.scaled_object is not None
    so = d.scaled_object.manifest
    assert (so["apiVersion"], so["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    assert so["metadata"]["ownerReferences"][0]["uid"] == "md-uid"
    assert so["metadata"]["ownerReferences"][0]["controller"] is True
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": "digits"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 7)
    assert spec["cooldownPeriod"] == 300
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == {
        "scaleUp": {"stabilizationWindowSeconds": 0},
        "scaleDown": {"stabilizationWindowSeconds": 300},
    }
    [trigger] = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"] == {
        "serverAddress": "http://prom.monitoring.svc:9090",
        "query": query,
        "threshold": threshold,
        "ignoreNullValues": "true",
    }
    # the old HPA goes; the Deployment's replicas are left to the autoscaler
    assert ("autoscaling/v2", "HorizontalPodAutoscaler") in d.absent
    assert d.deployment is not None and "replicas" not in d.deployment.manifest["spec"]
    # the ScaledObject comes before anything is deleted
    assert [c.kind for c in d.children()].index("ScaledObject") >= 0


def test_target_windows_and_address_from_the_spec() -> None:
    d = build(
        {
            "metric": "rps",
            "target": 12.5,
            "scaleUpStabilization": "30s",
            "scaleDownStabilization": "1m30s",
            "idleAfter": "10m",
            "prometheusAddress": "https://prom.example:9091",
        },
        keda_crds=True,
    )
    assert d.scaled_object is not None
    spec = d.scaled_object.manifest["spec"]
    assert spec["triggers"][0]["metadata"]["threshold"] == "12.5"
    assert spec["triggers"][0]["metadata"]["serverAddress"] == "https://prom.example:9091"
    assert spec["cooldownPeriod"] == 600
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == {
        "scaleUp": {"stabilizationWindowSeconds": 30},
        "scaleDown": {"stabilizationWindowSeconds": 90},
    }


@pytest.mark.parametrize(("metric", "target"), [("cpu", 70), ("memory", 80)])
def test_resource_metrics_make_an_hpa_with_the_documented_default(
    metric: str, target: int
) -> None:
    d = build({"metric": metric, "scaleDownStabilization": "2m"}, keda_crds=True)
    assert d.scaled_object is None and d.hpa is not None
    spec = d.hpa.manifest["spec"]
    assert spec["metrics"] == [{"type": "Resource", "resource": {
        "name": metric, "target": {"type": "Utilization", "averageUtilization": target}}}]
    assert spec["behavior"]["scaleDown"] == {"stabilizationWindowSeconds": 120}
    # KEDA's webhook must not refuse the ScaledObject of a switch while this HPA still exists
    assert d.hpa.manifest["metadata"]["annotations"]["validations.keda.sh/hpa-ownership"] == (
        "false")
    assert ("keda.sh/v1alpha1", "ScaledObject") in d.absent
    assert ("autoscaling/v2", "HorizontalPodAutoscaler") not in d.absent


def test_without_keda_no_scaled_object_and_the_old_hpa_is_kept() -> None:
    d = build({"metric": "concurrency"}, keda_crds=False)
    assert d.scaled_object is None and d.hpa is None
    assert ("autoscaling/v2", "HorizontalPodAutoscaler") not in d.absent
    # nothing to delete where KEDA is not served (no DELETE per object per restart)
    assert all(kind != "ScaledObject" for _, kind in build({"metric": "cpu"}).absent)


def test_no_autoscaling_removes_both() -> None:
    d = build(None, keda_crds=True)
    assert {k for _, k in d.absent} >= {"HorizontalPodAutoscaler", "ScaledObject"}
    assert d.deployment is not None and d.deployment.manifest["spec"]["replicas"] == 1


# --- the model --------------------------------------------------------------------------------


def test_scale_to_zero_is_refused_with_what_to_install() -> None:
    with pytest.raises(ValidationError) as info:
        Autoscaling.model_validate({"minReplicas": 0, "metric": "concurrency"})
    assert SCALE_TO_ZERO_REFUSAL in str(info.value)
    assert "activator" in SCALE_TO_ZERO_REFUSAL and "KEDA HTTP add-on" in SCALE_TO_ZERO_REFUSAL


@pytest.mark.parametrize(
    ("metric", "target"), [("cpu", 70.0), ("memory", 80.0), ("concurrency", 8.0), ("rps", 50.0)]
)
def test_documented_default_targets(metric: str, target: float) -> None:
    assert Autoscaling.model_validate({"metric": metric}).target_value == target


# --- switching metric: never a moment with neither ----------------------------------------------


class Kube:
    """The operator's AsyncKube in memory, recording every write in order; KEDA is served."""

    field_manager = "kubeforge"

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.objects: dict[str, JSON] = {}
        self.status: list[JSON] = []

    async def request(self, method: str, path: str, **kw: Any) -> JSON:
        if method == "GET" and path == "/apis/keda.sh/v1alpha1":
            return {"resources": [{"name": "scaledobjects"}, {"name": "scaledjobs"}]}
        if method == "GET" and path == "/apis/monitoring.coreos.com/v1":
            raise ApiError(404, "NotFound")
        if method == "DELETE":
            kind = path.rsplit("/", 2)[-2]
            self.log.append(("delete", kind))
            if self.objects.pop(kind, None) is None:
                raise ApiError(404, "NotFound")
            return {}
        raise AssertionError(f"unexpected {method} {path}")

    async def apply(self, o: JSON, *, force: bool = True, parse: bool = True) -> JSON:
        self.log.append(("apply", o["kind"]))
        live = copy.deepcopy(o)
        live["metadata"]["uid"] = "uid-" + o["kind"]
        if o["kind"] == "Deployment":
            live["spec"].setdefault("replicas", 1)
            live["metadata"]["managedFields"] = []
        plural = {"HorizontalPodAutoscaler": "horizontalpodautoscalers",
                  "ScaledObject": "scaledobjects"}.get(o["kind"], o["kind"])
        self.objects[plural] = live
        return live if parse else {}

    async def get(self, api_version: str, kind: str, ns: str, name: str) -> JSON | None:
        return None

    async def patch_status(self, *a: Any) -> None:
        self.status.append(a[-1])

    async def create(self, o: JSON) -> JSON:
        return o


def reconcile(rec: ModelDeploymentReconciler, autoscaling: JSON, kube: Kube) -> None:
    body = slim_md({**obj({"model": {"uri": URI}, "autoscaling": autoscaling}), "status": {}})
    hpa = kube.objects.get("horizontalpodautoscalers")
    children = {"HorizontalPodAutoscaler": sc.slim_hpa(hpa) if hpa else None}
    snap = Snapshot(md=body, deployment=None, replica_sets=[], pods=[], children=children,
                    source=None, trial_job=None)
    asyncio.run(rec(KEY, snap))


def writes_between(log: list[tuple[str, str]], start: int) -> list[tuple[str, str]]:
    return [w for w in log[start:] if w[1] in
            ("HorizontalPodAutoscaler", "ScaledObject", "horizontalpodautoscalers",
             "scaledobjects")]


def test_switching_metric_creates_the_new_autoscaler_before_deleting_the_old() -> None:
    kube = Kube()
    rec = ModelDeploymentReconciler(
        OperatorContext(settings=S, kube=kube, api=kube)  # type: ignore[arg-type]
    )
    reconcile(rec, {"metric": "cpu"}, kube)
    assert "horizontalpodautoscalers" in kube.objects

    n = len(kube.log)
    reconcile(rec, {"metric": "concurrency"}, kube)
    assert writes_between(kube.log, n) == [
        ("apply", "ScaledObject"), ("delete", "horizontalpodautoscalers")]
    assert set(kube.objects) >= {"scaledobjects"} and "horizontalpodautoscalers" not in kube.objects

    n = len(kube.log)
    reconcile(rec, {"metric": "cpu"}, kube)
    assert writes_between(kube.log, n) == [
        ("apply", "HorizontalPodAutoscaler"), ("delete", "scaledobjects")]
    assert "horizontalpodautoscalers" in kube.objects and "scaledobjects" not in kube.objects


def test_no_rights_on_scaled_objects_is_not_an_error_for_cpu() -> None:
    """KEDA installed but the chart's autoscaling.keda.enabled=false: deleting the (never made)
    ScaledObject is forbidden, and a cpu ModelDeployment still reconciles."""

    class Forbidden(Kube):
        async def request(self, method: str, path: str, **kw: Any) -> JSON:
            if method == "DELETE" and "/scaledobjects/" in path:
                self.log.append(("delete", "scaledobjects"))
                raise ApiError(403, "Forbidden")
            return await super().request(method, path, **kw)

    kube = Forbidden()
    rec = ModelDeploymentReconciler(
        OperatorContext(settings=S, kube=kube, api=kube)  # type: ignore[arg-type]
    )
    reconcile(rec, {"metric": "cpu"}, kube)
    assert ("delete", "scaledobjects") in kube.log
    assert "horizontalpodautoscalers" in kube.objects
    # not ended as ChildRejected (a 403 on a child otherwise fails the object)
    assert kube.status and all(st.get("phase") != "Failed" for st in kube.status), kube.status


# --- the autoscaler's view ----------------------------------------------------------------------


def keda_hpa(status: JSON, name: str = "keda-hpa-digits") -> JSON:
    return sc.slim_hpa({"metadata": {"name": name, "labels": {}}, "status": status})


def test_view_of_keda_hpa() -> None:
    a = Autoscaling.model_validate({"metric": "concurrency", "target": 4})
    status = {
        "currentReplicas": 2,
        "desiredReplicas": 5,
        "lastScaleTime": "2026-12-06T10:00:00Z",
        "currentMetrics": [{"type": "External", "external": {
            "metric": {"name": "s0-concurrency"}, "current": {"averageValue": "9500m"}}}],
        "conditions": [{"type": "AbleToScale", "status": "True"},
                       {"type": "ScalingActive", "status": "True"}],
    }
    # kubeforge's own (stale) HPA is not the one read for concurrency
    own = keda_hpa({"desiredReplicas": 1}, name="digits")
    view = sc.autoscaler_view(a, "digits", [own, keda_hpa(status)])
    assert view == {
        "kind": "ScaledObject", "metric": "concurrency", "target": "4",
        "currentValue": "9.5", "currentReplicas": 2, "desiredReplicas": 5,
        "lastScaleTime": "2026-12-06T10:00:00Z", "ready": True,
        "summary": "concurrency 9.5/4, 2->5",
    }


def test_view_of_resource_hpa_that_cannot_scale() -> None:
    a = Autoscaling.model_validate({"metric": "cpu"})
    status = {"currentReplicas": 1, "desiredReplicas": 1, "conditions": [
        {"type": "ScalingActive", "status": "False", "reason": "FailedGetResourceMetric",
         "message": "no metrics returned from resource metrics API"}]}
    view = sc.autoscaler_view(a, "digits", [keda_hpa(status, name="digits")])
    assert view is not None
    assert view["ready"] is False and view["target"] == "70%"
    assert view["message"].startswith("FailedGetResourceMetric: no metrics")
    assert view["summary"] == "cpu ?/70%, 1->1"


def test_view_without_keda_or_hpa() -> None:
    a = Autoscaling.model_validate({"metric": "rps"})
    v = sc.autoscaler_view(a, "digits", [], keda_served=False)
    assert v is not None and "install KEDA" in v["message"]
    v = sc.autoscaler_view(a, "digits", [])
    assert v is not None and "keda-hpa-digits" in v["message"]
    assert sc.autoscaler_view(None, "digits", []) is None

"""The ModelDeployment reconcile against a fake API client (no cluster): what it applies, deletes
and writes, and that it writes nothing when nothing changed."""

from __future__ import annotations

import copy
from typing import Any

from kubeforge.apply import ApiError
from kubeforge.context import OperatorContext
from kubeforge.modeldeployment.handlers import (
    ModelDeploymentReconciler,
    Snapshot,
    model_source_key,
    owns_replicas,
    slim_deployment,
    slim_md,
)
from kubeforge.settings import Settings

JSON = dict[str, Any]
KEY = ("ml", "digits")


class FakeKube:
    field_manager = "kubeforge"

    def __init__(self, monitoring: bool = False) -> None:
        self.monitoring = monitoring
        self.applied: list[JSON] = []
        self.deleted: list[str] = []
        self.status: list[JSON] = []
        self.events: list[JSON] = []
        self.objects: dict[tuple[str, str], JSON] = {}

    def request(self, method: str, path: str, **_: Any) -> JSON:
        if method == "GET" and path == "/apis/monitoring.coreos.com/v1":
            if not self.monitoring:
                raise ApiError(404, "NotFound")
            return {"resources": [{"name": "servicemonitors"}, {"name": "prometheusrules"}]}
        if method == "DELETE":
            self.deleted.append(path)
            raise ApiError(404, "NotFound")
        raise AssertionError(f"unexpected {method} {path}")

    def apply(self, obj: JSON, *, force: bool = True) -> JSON:
        self.applied.append(obj)
        live = copy.deepcopy(obj)
        live["metadata"]["uid"] = "child-" + obj["kind"]
        if obj["kind"] == "Deployment":
            fields = {"f:spec": {"f:replicas": {}}} if "replicas" in obj["spec"] else {}
            live["metadata"]["managedFields"] = [
                {"manager": "kubeforge", "operation": "Apply", "fieldsV1": fields}
            ]
            live["spec"].setdefault("replicas", 1)
        self.objects[(obj["kind"], obj["metadata"]["name"])] = live
        return live

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> JSON | None:
        return self.objects.get((kind, name))

    def patch_status(self, api_version: str, kind: str, ns: str, name: str, patch: JSON) -> JSON:
        self.status.append(patch)
        return {}

    def create(self, obj: JSON) -> JSON:
        self.events.append(obj)
        return obj


def md(spec: JSON, status: JSON | None = None) -> JSON:
    return slim_md(
        {
            "apiVersion": "kubeforge.io/v1alpha1",
            "metadata": {"name": "digits", "namespace": "ml", "uid": "md-uid", "generation": 1},
            "spec": spec,
            "status": status or {},
        }
    )


def reconciler(kube: FakeKube) -> ModelDeploymentReconciler:
    ctx = OperatorContext(settings=Settings(), kube=kube)  # type: ignore[arg-type]
    return ModelDeploymentReconciler(ctx)


def snap(obj: JSON, **kw: Any) -> Snapshot:
    base: dict[str, Any] = {
        "deployment": None,
        "replica_sets": [],
        "pods": [],
        "children": {},
        "source": None,
        "trial_job": None,
    }
    base.update(kw)
    return Snapshot(md=obj, **base)


def kinds(kube: FakeKube) -> list[str]:
    return [o["kind"] for o in kube.applied]


def test_first_reconcile_applies_children_and_status() -> None:
    kube = FakeKube()
    rec = reconciler(kube)
    rec(KEY, snap(md({"model": {"uri": "s3://b/m/"}, "replicas": 2})))
    assert kinds(kube) == ["Service", "Deployment", "PodDisruptionBudget"]
    st = kube.status[-1]
    assert st["phase"] == "Pending" and st["url"].endswith("/v2/models/digits")
    assert st["model"]["uri"] == "s3://b/m/"


def test_nothing_changed_writes_nothing() -> None:
    kube = FakeKube()
    rec = reconciler(kube)
    obj = md({"model": {"uri": "s3://b/m/"}})
    rec(KEY, snap(obj))
    dep = slim_deployment(kube.objects[("Deployment", "digits")], "kubeforge")
    svc = {
        "metadata": {
            **kube.objects[("Service", "digits")]["metadata"],
            "annotations": kube.objects[("Service", "digits")]["metadata"]["annotations"],
        }
    }
    n_applied, n_status = len(kube.applied), len(kube.status)
    rec(KEY, snap(obj, deployment=dep, children={"Service": svc}))
    rec(KEY, snap(obj, deployment=dep, children={"Service": svc}))
    assert len(kube.applied) == n_applied
    assert len(kube.status) == n_status


def test_waiting_for_training_job_applies_only_the_service() -> None:
    kube = FakeKube()
    rec = reconciler(kube)
    rec(KEY, snap(md({"model": {"fromTrainingJob": "train"}})))
    assert kinds(kube) == ["Service"]
    st = kube.status[-1]
    loaded = next(c for c in st["conditions"] if c["type"] == "ModelLoaded")
    assert (loaded["status"], loaded["reason"]) == ("False", "WaitingForModel")


def test_training_job_model_is_served_with_its_sha256() -> None:
    kube = FakeKube()
    rec = reconciler(kube)
    source = {
        "status": {
            "phase": "Succeeded",
            "artifacts": {"model": "pvc://art/ml/train/model.onnx", "sha256": "abc"},
        }
    }
    rec(KEY, snap(md({"model": {"fromTrainingJob": "train"}}), source=source))
    dep = kube.objects[("Deployment", "digits")]
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[1] == "pvc://art/ml/train/model.onnx"
    model = kube.status[-1]["model"]
    assert (model["uri"], model["sha256"]) == ("pvc://art/ml/train/model.onnx", "abc")


def test_autoscaling_starts_at_spec_replicas_then_leaves_them_to_the_hpa() -> None:
    kube = FakeKube()
    rec = reconciler(kube)
    obj = md({"model": {"uri": "s3://b/m/"}, "replicas": 3, "autoscaling": {"maxReplicas": 5}})
    rec(KEY, snap(obj))
    assert kinds(kube) == ["Service", "Deployment", "HorizontalPodAutoscaler"]
    assert kube.applied[1]["spec"]["replicas"] == 3
    # the HPA took spec.replicas over (we no longer own it): the next apply leaves it out
    live = copy.deepcopy(kube.objects[("Deployment", "digits")])
    live["metadata"]["managedFields"] = [
        {"manager": "kubeforge", "operation": "Apply", "fieldsV1": {"f:spec": {}}}
    ]
    live["spec"]["replicas"] = 5
    assert not owns_replicas(live, "kubeforge")
    rec.recent_deployment.clear()
    rec(KEY, snap(obj, deployment=slim_deployment(live, "kubeforge")))
    assert kinds(kube)[-1] == "Deployment"
    assert "replicas" not in kube.applied[-1]["spec"]


def test_removing_autoscaling_deletes_the_hpa() -> None:
    kube = FakeKube()
    rec = reconciler(kube)
    hpa = {"metadata": {"annotations": {}, "ownerReferences": [{"uid": "md-uid"}]}}
    rec(KEY, snap(md({"model": {"uri": "s3://b/m/"}}), children={"HorizontalPodAutoscaler": hpa}))
    assert any("horizontalpodautoscalers/digits" in p for p in kube.deleted)


def test_monitoring_children_only_when_crds_are_served() -> None:
    kube = FakeKube(monitoring=True)
    rec = reconciler(kube)
    rec(KEY, snap(md({"model": {"uri": "s3://b/m/"}})))
    assert kinds(kube) == ["Service", "Deployment", "ServiceMonitor", "PrometheusRule"]
    n = len(kube.applied)
    rec(KEY, snap(md({"model": {"uri": "s3://b/m/"}})))
    assert kinds(kube)[n:].count("ServiceMonitor") == 0  # applied once, not every reconcile


def test_invalid_spec_is_a_status_not_a_crash() -> None:
    kube = FakeKube()
    rec = reconciler(kube)
    bad = md({"model": {"uri": "s3://b/m/"}, "runtime": {"executionProvider": "cuda"}})
    rec(KEY, snap(bad))
    assert kube.applied == []
    st = kube.status[-1]
    assert st["phase"] == "Failed" and "gpus" in st["message"]


def test_model_source_key() -> None:
    assert model_source_key({"model": {"fromTrainingJob": "t"}}) == ("TrainingJob", "t")
    assert model_source_key({"model": {"fromTuningStudy": "s"}}) == ("TuningStudy", "s")
    assert model_source_key({"model": {"uri": "s3://x/"}}) is None

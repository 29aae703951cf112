"""The ModelDeployment reconcile against a fake API client (no cluster): what it applies, deletes
and writes, and that it writes nothing when nothing changed."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from kubeforge.apply import ApiError
from kubeforge.context import OperatorContext
from kubeforge.modeldeployment.handlers import (
    ModelDeploymentReconciler,
    MonitoringDiscovery,
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
    """The operator's AsyncKube, in memory."""

    field_manager = "kubeforge"

    def __init__(self, monitoring: bool = False) -> None:
        self.monitoring = monitoring
        self.applied: list[JSON] = []
        self.parsed: list[bool] = []
        """Per apply: whether the caller asked for the answer parsed."""
        self.deleted: list[str] = []
        self.status: list[JSON] = []
        self.events: list[JSON] = []
        self.objects: dict[tuple[str, str], JSON] = {}
        self.discoveries = 0

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
        resource: str = "",
        parse: bool = True,
    ) -> JSON:
        if method == "GET" and path == "/apis/monitoring.coreos.com/v1":
            self.discoveries += 1
            served = self.monitoring  # when the API server answers
            await asyncio.sleep(0)  # the answer travels a while: other reconciles run meanwhile
            if not served:
                raise ApiError(404, "NotFound")
            return {"resources": [{"name": "servicemonitors"}, {"name": "prometheusrules"}]}
        if method == "GET" and path == "/apis/keda.sh/v1alpha1":
            raise ApiError(404, "NotFound")  # KEDA is not installed (test_autoscaling_switch.py)
        if method == "DELETE":
            assert not parse  # nobody reads the answer
            self.deleted.append(path)
            raise ApiError(404, "NotFound")
        raise AssertionError(f"unexpected {method} {path}")

    async def apply(self, obj: JSON, *, force: bool = True, parse: bool = True) -> JSON:
        assert force
        live = self._apply(obj, parse)
        return live if parse else {}

    def _apply(self, obj: JSON, parse: bool) -> JSON:
        self.applied.append(obj)
        self.parsed.append(parse)
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

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> JSON | None:
        return self.objects.get((kind, name))

    async def patch_status(
        self, api_version: str, kind: str, ns: str, name: str, patch: JSON
    ) -> None:
        self.status.append(patch)

    async def create(self, obj: JSON) -> JSON:
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


class Rec:
    """A reconciler driven synchronously (each call runs the coroutine to its end)."""

    def __init__(self, kube: FakeKube) -> None:
        self.inner = ModelDeploymentReconciler(
            OperatorContext(settings=Settings(), kube=kube, api=kube)  # type: ignore[arg-type]
        )

    def __call__(self, key: tuple[str, str], view: Snapshot) -> None:
        asyncio.run(self.inner(key, view))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def reconciler(kube: FakeKube) -> Rec:
    return Rec(kube)


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
    # only the Deployment's answer is read (so parsed); the others are not
    assert kube.parsed == [False, True, False]
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


def test_concurrent_reconciles_share_one_discovery_request() -> None:
    """Reconciles of different objects interleave on the loop: while one discovery request is
    in flight the others wait for its answer instead of sending their own."""
    kube = FakeKube(monitoring=True)
    rec = reconciler(kube)
    keys = [("ml", f"m{i}") for i in range(3)]

    def obj(name: str) -> JSON:
        o = md({"model": {"uri": "s3://b/m/"}})
        return {**o, "metadata": {**o["metadata"], "name": name, "uid": f"uid-{name}"}}

    async def all_at_once() -> None:
        await asyncio.gather(*(rec.inner(k, snap(obj(k[1]))) for k in keys))

    asyncio.run(all_at_once())
    assert kube.discoveries == 1
    assert kinds(kube).count("ServiceMonitor") == 3
    assert len(kube.status) == 3


def test_invalidate_during_a_discovery_request_is_kept() -> None:
    kube = FakeKube(monitoring=True)
    disc = MonitoringDiscovery(kube)  # type: ignore[arg-type]

    async def run() -> tuple[bool, bool]:
        first = asyncio.ensure_future(disc.available())
        while kube.discoveries == 0:
            await asyncio.sleep(0)  # until the request is in flight
        disc.invalidate()  # e.g. an apply found the CRD gone
        kube.monitoring = False
        return await first, await disc.available()

    assert asyncio.run(run()) == (True, False)  # the answer from before is not cached
    assert kube.discoveries == 2
    assert asyncio.run(disc.available()) is False and kube.discoveries == 2  # cached now


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

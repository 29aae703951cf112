"""ModelDeployment's kopf wiring (thin): indexes of the object, its children and the TrainingJobs /
TuningStudies it may take its model from, and event handlers that only queue a reconcile.

Triggers: the ModelDeployment itself, every owned child (Deployment, its ReplicaSets and pods,
Service, HPA, PDB), and status changes of a TrainingJob / TuningStudy that a ModelDeployment names
in `spec.model`. ServiceMonitor and PrometheusRule are not watched (their CRDs may be absent): they
are applied when their hash changes and re-checked with one GET per resync period.

One file per concern: `indexed.py` (what the indexes hold), `monitoring.py` (Prometheus
Operator discovery), `reconcile.py` (the reconcile), this one (the wiring).
"""

from __future__ import annotations

from typing import Any

import kopf

from kubeforge.context import OperatorContext
from kubeforge.controller import Controller, Key
from kubeforge.modeldeployment.autoscaling import slim_hpa
from kubeforge.modeldeployment.indexed import (
    GROUP,
    IDX_BY_SOURCE,
    IDX_DEPLOY,
    IDX_HPA,
    IDX_MD,
    IDX_PDB,
    IDX_PODS,
    IDX_RS,
    IDX_SRC_TJ,
    IDX_SRC_TS,
    IDX_SVC,
    KIND,
    PLURAL,
    VERSION,
    Snapshot,
    model_source_key,
    owns_replicas,
    slim_child,
    slim_deployment,
    slim_md,
    slim_pod,
    slim_source,
)
from kubeforge.modeldeployment.monitoring import MonitoringDiscovery
from kubeforge.modeldeployment.reconcile import ModelDeploymentReconciler
from kubeforge.modeldeployment.rollout_handlers import register_rollout

__all__ = [
    "ModelDeploymentReconciler",
    "MonitoringDiscovery",
    "Snapshot",
    "model_source_key",
    "owns_replicas",
    "register",
    "slim_deployment",
    "slim_md",
]


def register(ctx: OperatorContext) -> Controller[Snapshot]:
    """Register ModelDeployment's indexes and event handlers on `ctx.registry`; returns its
    controller (started by main)."""
    s = ctx.settings
    owner_label = s.label("modeldeployment")
    selector = {owner_label: kopf.PRESENT}
    rec = ModelDeploymentReconciler(ctx)
    ctl: Controller[Snapshot] = Controller(
        KIND, snapshot=rec.snapshot, reconcile=rec, workers=s.concurrency, forget=rec.forget
    )
    ctl.reconciler = rec  # type: ignore[attr-defined]

    def parent(namespace: str | None, labels: Any) -> Key:
        return (namespace or "", labels[owner_label])

    # --- the object and who refers to what --------------------------------------------------

    @ctx.index_handler(GROUP, VERSION, PLURAL, id=IDX_MD)
    async def index_md(**kw: Any) -> Any:
        return {(kw["namespace"], kw["name"]): slim_md(kw["body"])}

    @ctx.index_handler(GROUP, VERSION, PLURAL, id=IDX_BY_SOURCE)
    async def index_by_source(**kw: Any) -> Any:
        ref = model_source_key(kw["body"].get("spec"))
        if ref is None:
            return None
        return {(kw["namespace"], *ref): kw["name"]}

    @ctx.event_handler(GROUP, VERSION, PLURAL, id="kubeforge-modeldeployment-event")
    async def on_md(**kw: Any) -> None:
        key = (kw["namespace"], kw["name"])
        if kw["type"] == "DELETED":
            ctl.forget(key)
        else:
            ctl.enqueue(key)

    # --- model sources ---------------------------------------------------------------------

    def referrers(namespace: str, kind: str, name: str) -> list[str]:
        return [str(n) for n in ctx.all(IDX_BY_SOURCE, (namespace, kind, name))]

    @ctx.index_handler(GROUP, VERSION, "trainingjobs", id=IDX_SRC_TJ)
    async def index_src_tj(**kw: Any) -> Any:
        return {(kw["namespace"], kw["name"]): slim_source(kw["body"])}

    @ctx.index_handler(GROUP, VERSION, "tuningstudies", id=IDX_SRC_TS)
    async def index_src_ts(**kw: Any) -> Any:
        return {(kw["namespace"], kw["name"]): slim_source(kw["body"])}

    @ctx.event_handler(
        GROUP, VERSION, "trainingjobs", id="kubeforge-modeldeployment-tj-event"
    )
    async def on_tj(**kw: Any) -> None:
        ns, name = kw["namespace"], kw["name"]
        for md_name in referrers(ns, "TrainingJob", name):
            ctl.enqueue((ns, md_name))
        # a best trial's TrainingJob carries the sha256 of a study's model
        for md_name in _study_referrers(ns, name):
            ctl.enqueue((ns, md_name))

    def _study_referrers(ns: str, tj_name: str) -> list[str]:
        out: list[str] = []
        idx = ctx.index(IDX_BY_SOURCE)
        for key in list(idx):
            if key[0] != ns or key[1] != "TuningStudy":
                continue
            study = ctx.one(IDX_SRC_TS, (ns, key[2]))
            best = ((study or {}).get("status") or {}).get("bestTrial") or {}
            if best.get("name") == tj_name:
                out += [str(n) for n in idx.all(key)]
        return out

    @ctx.event_handler(
        GROUP, VERSION, "tuningstudies", id="kubeforge-modeldeployment-ts-event"
    )
    async def on_ts(**kw: Any) -> None:
        ns, name = kw["namespace"], kw["name"]
        for md_name in referrers(ns, "TuningStudy", name):
            ctl.enqueue((ns, md_name))

    # --- children --------------------------------------------------------------------------

    @ctx.index_handler("apps", "v1", "deployments", id=IDX_DEPLOY, labels=selector)
    async def index_deploy(**kw: Any) -> Any:
        return {parent(kw["namespace"], kw["labels"]): slim_deployment(kw["body"], s.field_manager)}

    @ctx.index_handler("apps", "v1", "replicasets", id=IDX_RS, labels=selector)
    async def index_rs(**kw: Any) -> Any:
        return {parent(kw["namespace"], kw["labels"]): slim_child(kw["body"])}

    @ctx.index_handler("", "v1", "pods", id=IDX_PODS, labels=selector)
    async def index_pods(**kw: Any) -> Any:
        return {parent(kw["namespace"], kw["labels"]): slim_pod(kw["body"])}

    @ctx.index_handler("", "v1", "services", id=IDX_SVC, labels=selector)
    async def index_svc(**kw: Any) -> Any:
        return {parent(kw["namespace"], kw["labels"]): slim_child(kw["body"])}

    @ctx.index_handler(
        "autoscaling", "v2", "horizontalpodautoscalers", id=IDX_HPA, labels=selector
    )
    async def index_hpa(**kw: Any) -> Any:
        # ours and KEDA's keda-hpa-<name> (it copies the ScaledObject's labels): status reads both
        return {parent(kw["namespace"], kw["labels"]): slim_hpa(kw["body"])}

    @ctx.index_handler("policy", "v1", "poddisruptionbudgets", id=IDX_PDB, labels=selector)
    async def index_pdb(**kw: Any) -> Any:
        return {parent(kw["namespace"], kw["labels"]): slim_child(kw["body"])}

    def child_event(kind: str) -> Any:
        async def on_child(**kw: Any) -> None:
            key = parent(kw["namespace"], kw["labels"])
            if kw["type"] == "DELETED":
                rec.child_gone(key, kind)
            ctl.enqueue(key)

        return on_child

    for group, version, resource, kind in (
        ("apps", "v1", "deployments", "Deployment"),
        ("apps", "v1", "replicasets", "ReplicaSet"),
        ("", "v1", "pods", "Pod"),
        ("", "v1", "services", "Service"),
        ("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler"),
        ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    ):
        ctx.event_handler(
            group,
            version,
            resource,
            id=f"kubeforge-modeldeployment-{resource}-event",
            labels=selector,
        )(child_event(kind))

    register_rollout(ctx, ctl)

    def all_keys() -> list[Key]:
        return list(ctx.index(IDX_MD))

    ctl.all_keys = all_keys  # type: ignore[attr-defined]
    ctx.controllers.append(ctl)
    return ctl

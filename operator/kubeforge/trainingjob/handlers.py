"""TrainingJob's kopf wiring (thin): indexes of the object and its children, level-based event
handlers that only queue a reconcile (`reconcile.py`; what the indexes hold: `indexed.py`).

No kopf change-detection handlers (on.create/on.update) are used: they would make kopf write its
bookkeeping annotations on every object. Watching events plus in-memory indexes costs no writes.
"""

from __future__ import annotations

from typing import Any

import kopf

from kubeforge.context import OperatorContext
from kubeforge.controller import Controller, Key
from kubeforge.trainingjob.indexed import (
    GROUP,
    IDX_JOBS,
    IDX_PODS,
    IDX_SVCS,
    IDX_TJ,
    IDX_WORKLOADS,
    KIND,
    PLURAL,
    VERSION,
    Snapshot,
    slim_child,
    slim_pod,
    slim_tj,
)
from kubeforge.trainingjob.reconcile import TrainingJobReconciler


def register(ctx: OperatorContext) -> Controller[Snapshot]:
    """Register TrainingJob's indexes and event handlers on `ctx.registry`; returns its
    controller (started by main)."""
    s = ctx.settings
    owner_label = s.label("trainingjob")
    selector = {owner_label: kopf.PRESENT}
    rec = TrainingJobReconciler(ctx)
    ctl: Controller[Snapshot] = Controller(
        KIND, snapshot=rec.snapshot, reconcile=rec, workers=s.concurrency, idle=rec.idle, forget=rec.forget
    )
    ctl.reconciler = rec  # type: ignore[attr-defined]

    def parent(namespace: str | None, labels: Any) -> Key:
        return (namespace or "", labels[owner_label])

    @ctx.index_handler(GROUP, VERSION, PLURAL, id=IDX_TJ)
    async def index_tj(**kw: Any) -> Any:
        return {(kw["namespace"], kw["name"]): slim_tj(kw["body"])}

    @ctx.index_handler("batch", "v1", "jobs", id=IDX_JOBS, labels=selector)
    async def index_jobs(**kw: Any) -> Any:
        return {parent(kw["namespace"], kw["labels"]): slim_child(kw["body"])}

    @ctx.index_handler("", "v1", "pods", id=IDX_PODS, labels=selector)
    async def index_pods(**kw: Any) -> Any:
        return {parent(kw["namespace"], kw["labels"]): slim_pod(kw["body"])}

    @ctx.index_handler("", "v1", "services", id=IDX_SVCS, labels=selector)
    async def index_svcs(**kw: Any) -> Any:
        return {parent(kw["namespace"], kw["labels"]): slim_child(kw["body"])}

    @ctx.event_handler(GROUP, VERSION, PLURAL, id="kubeforge-trainingjob-event")
    async def on_tj(**kw: Any) -> None:
        key = (kw["namespace"], kw["name"])
        if kw["type"] == "DELETED":
            ctl.forget(key)
        else:
            ctl.enqueue(key)

    @ctx.event_handler(
        "batch", "v1", "jobs", id="kubeforge-trainingjob-job-event", labels=selector
    )
    async def on_job(**kw: Any) -> None:
        key = parent(kw["namespace"], kw["labels"])
        if kw["type"] == "DELETED":
            rec.job_gone(key)
        ctl.enqueue(key)

    @ctx.event_handler(
        "", "v1", "pods", id="kubeforge-trainingjob-pod-event", labels=selector
    )
    async def on_pod(**kw: Any) -> None:
        ctl.enqueue(parent(kw["namespace"], kw["labels"]))

    @ctx.event_handler(
        "", "v1", "services", id="kubeforge-trainingjob-svc-event", labels=selector
    )
    async def on_svc(**kw: Any) -> None:
        key = parent(kw["namespace"], kw["labels"])
        if kw["type"] == "DELETED":
            rec.service_gone(key)
        ctl.enqueue(key)

    if ctx.kueue:
        uid_label = {"kueue.x-k8s.io/job-uid": kopf.PRESENT}

        def owner_job(body: Any) -> str | None:
            for ref in body["metadata"].get("ownerReferences") or []:
                if ref.get("kind") == "Job" and ref.get("apiVersion") == "batch/v1":
                    return str(ref.get("name"))
            return None

        @ctx.index_handler(
            "kueue.x-k8s.io",
            "v1beta2",
            "workloads",
            id=IDX_WORKLOADS,
            labels=uid_label,
        )
        async def index_workloads(**kw: Any) -> Any:
            job = owner_job(kw["body"])
            if job is None:
                return None
            return {(kw["namespace"], job): {"status": kw["body"].get("status") or {}}}

        @ctx.event_handler(
            "kueue.x-k8s.io",
            "v1beta2",
            "workloads",
            id="kubeforge-trainingjob-workload-event",
            labels=uid_label,
        )
        async def on_workload(**kw: Any) -> None:
            job = owner_job(kw["body"])
            key = (kw["namespace"], job or "")
            if job is not None and key in ctx.index(IDX_TJ):
                ctl.enqueue(key)

    def all_keys() -> list[Key]:
        return list(ctx.index(IDX_TJ))

    ctl.all_keys = all_keys  # type: ignore[attr-defined]
    if ctx.progress is not None:
        # the progress endpoint reads the TrainingJob and its Job here, and wakes the reconcile
        ctx.progress.lookup = lambda ns, name: (
            ctx.one(IDX_TJ, (ns, name)),
            ctx.one(IDX_JOBS, (ns, name)),
        )
        ctx.progress.on_report = ctl.enqueue
    ctx.controllers.append(ctl)
    return ctl

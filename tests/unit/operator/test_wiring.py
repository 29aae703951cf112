"""The kopf wiring: what is registered, and kopf's settings (no cluster)."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
from kubeforge.context import OperatorContext
from kubeforge.main import build_operator, kopf_settings, parse_args
from kubeforge.settings import Settings
from kubeforge.trainingjob import handlers


class _NoKube:
    field_manager = "kubeforge"


def _ctx(kueue: bool = False) -> OperatorContext:
    ctx = OperatorContext(settings=Settings(), kube=_NoKube())  # type: ignore[arg-type]
    ctx.kueue = kueue
    build_operator(ctx, kinds=("kubeforge.trainingjob.handlers",))
    return ctx


def _ids(handlers_: Any) -> set[str]:
    return {str(h.id) for h in handlers_}


def test_registered_handlers_are_watch_only() -> None:
    reg = _ctx().registry
    idx = _ids(reg._indexing.get_all_handlers())
    assert {handlers.IDX_TJ, handlers.IDX_JOBS, handlers.IDX_PODS, handlers.IDX_SVCS} <= idx
    assert handlers.IDX_WORKLOADS not in idx
    watch = _ids(reg._watching.get_all_handlers())
    assert "kubeforge-trainingjob-event" in watch and "kubeforge-trainingjob-pod-event" in watch
    # nothing that makes kopf write: no change-detection handlers, no daemons/timers
    assert list(reg._changing.get_all_handlers()) == []
    assert list(reg._spawning.get_all_handlers()) == []


def test_kueue_workloads_indexed_when_served() -> None:
    assert handlers.IDX_WORKLOADS in _ids(_ctx(kueue=True).registry._indexing.get_all_handlers())


def test_kopf_settings_prefix_and_posting() -> None:
    ks = kopf_settings(Settings(concurrency=7))
    assert ks.persistence.finalizer == "kubeforge.io/finalizer"
    assert ks.posting.enabled is False
    assert ks.execution.max_workers == 7
    assert ks.persistence.progress_storage.prefix == "kubeforge.io"  # type: ignore[attr-defined]


def test_cli() -> None:
    a = parse_args(["--namespace", "a", "-n", "b", "--metrics-port", "9000"])
    assert a.namespace == ["a", "b"] and a.metrics_port == 9000


def test_index_values_are_slim() -> None:
    body = kopf.Body({"metadata": {"name": "p", "namespace": "ml", "labels": {"kubeforge.io/trainingjob": "x"},
                                   "annotations": {"kubeforge.io/progress": "{}"}, "managedFields": [{"big": 1}]},
                      "spec": {"containers": [{"name": "trainer"}]},
                      "status": {"phase": "Running", "podIP": "1.2.3.4", "containerStatuses": []}})
    slim = handlers.slim_pod(body)
    assert "managedFields" not in slim["metadata"] and "spec" not in slim
    assert slim["status"]["phase"] == "Running" and "podIP" not in slim["status"]


def test_snapshot_reads_indexes() -> None:
    ctx = _ctx()
    rec = handlers.TrainingJobReconciler(ctx)
    body = kopf.Body({"apiVersion": "kubeforge.io/v1alpha1", "metadata": {"name": "x", "namespace": "ml", "uid": "u"}, "spec": {}})
    ctx.indexes.ensure(handlers.IDX_TJ).replace(("ml", "x", "u"), {("ml", "x"): handlers.slim_tj(body)})
    snap = rec.snapshot(("ml", "x"))
    assert snap is not None and snap.job is None and snap.pods == []
    assert rec.snapshot(("ml", "other")) is None
    asyncio.run(asyncio.sleep(0))

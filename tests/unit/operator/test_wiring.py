"""The kopf wiring: what is registered, and kopf's settings (no cluster)."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
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


def _recorded(monkeypatch: pytest.MonkeyPatch, kueue: bool = False) -> dict[str, tuple[Any, ...]]:
    """Handler ids registered through kopf's public decorators, with their resource."""
    seen: dict[str, tuple[Any, ...]] = {}

    def recorder(real: Any) -> Any:
        def decorator(*args: Any, **kwargs: Any) -> Any:
            seen[str(kwargs["id"])] = args
            return real(*args, **kwargs)

        return decorator

    monkeypatch.setattr(kopf, "index", recorder(kopf.index))
    monkeypatch.setattr(kopf.on, "event", recorder(kopf.on.event))

    def forbidden(*_: Any, **__: Any) -> Any:
        raise AssertionError("a change-detecting handler: kopf's diff-base is off (main.py)")

    for name in ("create", "update", "resume", "field", "delete", "timer", "daemon"):
        monkeypatch.setattr(kopf.on, name, forbidden)
    _ctx(kueue)
    return seen


def test_registered_index_and_event_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _recorded(monkeypatch)
    assert {handlers.IDX_TJ, handlers.IDX_JOBS, handlers.IDX_PODS, handlers.IDX_SVCS} <= set(seen)
    assert handlers.IDX_WORKLOADS not in seen
    assert seen["kubeforge-trainingjob-event"] == ("kubeforge.io", "v1alpha1", "trainingjobs")
    assert seen["kubeforge-trainingjob-pod-event"] == ("", "v1", "pods")


def test_kueue_workloads_indexed_when_served(monkeypatch: pytest.MonkeyPatch) -> None:
    assert handlers.IDX_WORKLOADS in _recorded(monkeypatch, kueue=True)


def test_kopf_settings_prefix_and_posting() -> None:
    ks = kopf_settings(Settings(concurrency=7))
    assert ks.persistence.finalizer == "kubeforge.io/finalizer"
    assert ks.posting.enabled is False
    assert ks.execution.max_workers == 7
    assert ks.persistence.progress_storage.prefix == "kubeforge.io"  # type: ignore[attr-defined]
    assert ks.persistence.diffbase_storage.fetch(body=kopf.Body({})) is None
    # a silent watch stream is noticed (bookmarks count) well before the old 660 s
    assert ks.watching.client_timeout is not None and ks.watching.client_timeout < 600
    if hasattr(ks.watching, "inactivity_timeout"):  # kopf >= 1.45: bookmarks count
        assert ks.watching.inactivity_timeout <= 120


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
    ctx.indexes[handlers.IDX_TJ] = {("ml", "x"): [handlers.slim_tj(body)]}
    snap = rec.snapshot(("ml", "x"))
    assert snap is not None and snap.job is None and snap.pods == []
    assert rec.snapshot(("ml", "other")) is None
    asyncio.run(asyncio.sleep(0))

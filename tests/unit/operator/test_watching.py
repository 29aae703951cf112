"""kubeforge's watch layer without a cluster: stream planning, filters, index/event dispatch."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
from kubeforge.context import OperatorContext
from kubeforge.indexes import Indexes
from kubeforge.main import build_operator
from kubeforge.settings import Settings
from kubeforge.trainingjob import handlers
from kubeforge.watching import Watcher, label_selector, lifecycle_registry, plan_groups


class _NoKube:
    field_manager = "kubeforge"
    user_agent = "kubeforge-operator"


def _ctx() -> OperatorContext:
    ctx = OperatorContext(settings=Settings(), kube=_NoKube())  # type: ignore[arg-type]
    build_operator(ctx, kinds=("kubeforge.trainingjob.handlers",))
    return ctx


def test_label_selector() -> None:
    assert label_selector(None) is None
    assert label_selector({"b": kopf.PRESENT, "a": "x", "c": kopf.ABSENT}) == "a=x,b,!c"
    assert label_selector({"a": lambda v, **_: True}) is None


def test_trainingjob_streams() -> None:
    groups = {(g.plural, g.selector): g for g in plan_groups(_ctx().registry)}
    assert set(groups) == {
        ("trainingjobs", None),
        ("jobs", "kubeforge.io/trainingjob"),
        ("pods", "kubeforge.io/trainingjob"),
        ("services", "kubeforge.io/trainingjob"),
    }
    assert groups[("pods", "kubeforge.io/trainingjob")].path("ml") == "/api/v1/namespaces/ml/pods"
    assert groups[("jobs", "kubeforge.io/trainingjob")].path(None) == "/apis/batch/v1/jobs"


def test_unfilterable_handler_makes_one_unfiltered_stream() -> None:
    reg = kopf.OperatorRegistry()

    @kopf.index("", "v1", "pods", id="a", labels={"x": kopf.PRESENT}, registry=reg)
    async def a(**_: Any) -> Any:
        return None

    @kopf.on.event("", "v1", "pods", id="b", registry=reg)
    async def b(**_: Any) -> None:
        return None

    (g,) = plan_groups(reg)
    assert g.selector is None and len(g.indexing) == 1 and len(g.watching) == 1


def test_lifecycle_registry_keeps_only_activities() -> None:
    reg = lifecycle_registry(_ctx().registry)
    assert list(reg._indexing.get_all_handlers()) == []
    assert list(reg._watching.get_all_handlers()) == []
    assert any(str(h.id).endswith("start_controllers") for h in reg._activities.get_all_handlers())


def _pod(name: str, owner: str | None, phase: str = "Running") -> dict[str, Any]:
    labels = {"kubeforge.io/trainingjob": owner} if owner else {}
    return {"metadata": {"name": name, "namespace": "ml", "uid": f"u-{name}", "labels": labels},
            "status": {"phase": phase}}


def test_dispatch_indexes_then_queues() -> None:
    ctx = _ctx()
    ctl = ctx.controllers[0]
    queued: list[Any] = []
    ctl.enqueue = queued.append  # type: ignore[method-assign]
    w = Watcher(ctx.registry, ctx.indexes, ctx.api)
    pods = next(g for g in w.groups if g.plural == "pods")
    known: dict[Any, Any] = {}

    async def go() -> None:
        w._dispatch(pods, "ADDED", _pod("p0", "tj"), known)
        assert ctx.one(handlers.IDX_PODS, ("ml", "tj"))["status"]["phase"] == "Running"
        assert queued == [("ml", "tj")]
        # a pod that loses the label (client-side filter) leaves the index
        w._dispatch(pods, "MODIFIED", _pod("p0", None), known)
        assert ctx.all(handlers.IDX_PODS, ("ml", "tj")) == []
        w._dispatch(pods, "MODIFIED", _pod("p0", "tj", "Pending"), known)
        assert ctx.one(handlers.IDX_PODS, ("ml", "tj"))["status"]["phase"] == "Pending"
        w._dispatch(pods, "DELETED", _pod("p0", "tj"), known)
        assert ctx.all(handlers.IDX_PODS, ("ml", "tj")) == [] and known == {}

    asyncio.run(go())


def test_failing_index_handler_drops_the_object() -> None:
    reg = kopf.OperatorRegistry()
    calls: list[str] = []

    @kopf.index("", "v1", "pods", id="idx", registry=reg)
    async def idx(**kw: Any) -> Any:
        if kw["body"].get("bad"):
            raise RuntimeError("boom")
        return {kw["name"]: 1}

    @kopf.on.event("", "v1", "pods", id="ev", registry=reg)
    async def ev(**kw: Any) -> None:
        calls.append(str(kw["type"]))

    indexes = Indexes()
    w = Watcher(reg, indexes, _NoKube())  # type: ignore[arg-type]
    (g,) = w.groups

    async def go() -> None:
        w._dispatch(g, "ADDED", _pod("p", None), {})
        assert "p" in indexes["idx"]
        w._dispatch(g, "MODIFIED", {**_pod("p", None), "bad": True}, {})
        assert "p" not in indexes["idx"]

    asyncio.run(go())
    assert calls == ["ADDED", "MODIFIED"]

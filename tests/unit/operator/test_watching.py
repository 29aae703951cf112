"""kubeforge's watch layer without a cluster: stream planning, filters, index/event dispatch."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import orjson
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


class _ScriptedApi:
    """An AsyncKube stand-in for one stream: lists and watch bodies played from a script."""

    def __init__(self, lists: list[dict[str, Any]], watches: list[tuple[int, list[bytes]]]) -> None:
        self.lists = lists
        self.watches = watches
        self.list_calls: list[dict[str, str]] = []
        self.watch_targets: list[str] = []
        self.http = self
        self.done = asyncio.Event()

    def headers(self, path: str, method: str = "GET") -> dict[str, str]:
        return {}

    async def request(self, method: str, path: str, *, query: dict[str, str] | None = None,
                      **_: Any) -> dict[str, Any]:
        self.list_calls.append(dict(query or {}))
        return self.lists.pop(0)

    async def stream(self, target: str, headers: dict[str, str], sink: Any, idle: float) -> tuple[int, bytes]:
        self.watch_targets.append(target)
        if not self.watches:
            self.done.set()
            await asyncio.sleep(3600)
        status, chunks = self.watches.pop(0)
        if status >= 300:
            return status, b"gone"
        for chunk in chunks:
            sink(chunk)
        return 200, b""


def _event(etype: str, name: str, rv: int, phase: str = "Running") -> bytes:
    pod = _pod(name, "tj", phase)
    pod["metadata"]["resourceVersion"] = str(rv)
    return orjson.dumps({"type": etype, "object": pod})


def test_watch_follows_resource_versions_and_relists_when_expired() -> None:
    """List, watch from the list's resourceVersion (events split across chunks, a bookmark
    moves it on), resume from the last one seen, relist on 410 Gone: an object missing from the
    new list is handed to the handlers as DELETED."""
    ctx = _ctx()
    queued: list[Any] = []
    ctx.controllers[0].enqueue = queued.append  # type: ignore[method-assign]
    p0 = {**_pod("p0", "tj"), "metadata": {**_pod("p0", "tj")["metadata"], "resourceVersion": "5"}}
    body = (_event("ADDED", "p1", 7) + b"\n" + _event("MODIFIED", "p1", 8, "Succeeded") + b"\n"
            + orjson.dumps({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}) + b"\n")
    api = _ScriptedApi(
        lists=[{"items": [p0], "metadata": {"resourceVersion": "6"}},
               {"items": [], "metadata": {"resourceVersion": "20"}}],  # after 410: both pods gone
        watches=[(200, [body[:30], body[30:31], body[31:]]),
                 (200, [orjson.dumps({"type": "ERROR", "object": {"code": 410}}) + b"\n"])],
    )
    w = Watcher(ctx.registry, ctx.indexes, api)  # type: ignore[arg-type]
    pods = next(g for g in w.groups if g.plural == "pods")
    seen: list[list[str]] = []

    async def go() -> None:
        task = asyncio.create_task(w._stream(pods, "ml"))
        await asyncio.wait_for(api.done.wait(), 5)
        seen.append([str(v["status"]["phase"]) for v in ctx.all(handlers.IDX_PODS, ("ml", "tj"))])
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    w._listed = w.streams  # the other streams are not part of this test
    w._all_listed.set()
    asyncio.run(go())
    rvs = [t.split("resourceVersion=")[1].split("&")[0] for t in api.watch_targets]
    assert rvs == ["6", "9", "20"]  # from the list, then from the bookmark, then from the relist
    assert [q.get("labelSelector") for q in api.list_calls] == ["kubeforge.io/trainingjob"] * 2
    assert seen == [[]]  # p0 and p1 both gone after the relist (DELETED dispatched)
    assert queued.count(("ml", "tj")) >= 4  # listed p0, p1 added, p1 modified, deletions

"""kubeforge's watch layer: list + watch streams that feed the `@kopf.index` and `@kopf.on.event`
handlers registered on the operator's registry, without kopf's per-event machinery.

kopf turns every watch event into a cause, three object loggers, a per-object worker task, a
throttler, a patch and two rounds of handler invocation (indexing, then watching) with ~30
keyword arguments each: measured at ~3 ms of CPU per event, 9-10 events per TrainingJob. Our
handlers only keep slim copies in indexes and queue a reconcile, so a plain loop does: one
stream per resource (and label selector) and namespace over `kubeforge._http`, each event parsed
once in the connection's data callback, its matching handlers called directly (they must not
await anything).

What stays as kopf defines it: the handlers and their filters (registered with kopf's
decorators), the index model (`kubeforge.indexes`, read through `OperatorContext`), the
order (every index handler of an event before its event handlers), listed objects arriving
with `type=None` only after *every* stream has listed (so the first reconciles see complete
indexes), and errors in a handler logged and ignored (an index handler that raises drops the
object from its index). kopf itself still runs the operator's lifecycle (login, startup and
cleanup handlers, liveness probe, signals) with a registry that holds no resource handlers.

Supported filters: `labels=` and `annotations=` with values, `kopf.PRESENT`, `kopf.ABSENT` or
callables, and `when=`; label filters without callables are also sent to the API server as a
`labelSelector` (fewer events to parse). Other filters (`field=`, `value=`) are refused at start.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import CoroutineType
from typing import Any

import kopf
import orjson

from kubeforge.apply import ApiError, AsyncKube
from kubeforge.indexes import Indexes, ObjKey
from kubeforge.metrics import WATCH_BYTES, WATCH_EVENTS

log = logging.getLogger("kubeforge.watching")

JSON = dict[str, Any]

WATCH_TIMEOUT = 600
"""Seconds the API server keeps one watch request open (then it is renewed from the last
resourceVersion)."""
LIST_LIMIT = 500
RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0)


class WatchError(Exception):
    """A watch stream ended with an error the stream cannot recover from by itself."""


def _match_meta(values: Mapping[str, str], flt: Mapping[str, Any] | None, kw: JSON) -> bool:
    if not flt:
        return True
    for key, want in flt.items():
        have = values.get(key)
        if want is kopf.PRESENT:
            if have is None:
                return False
        elif want is kopf.ABSENT:
            if have is not None:
                return False
        elif callable(want):
            if not want(have, **kw):
                return False
        elif have != want:
            return False
    return True


def label_selector(flt: Mapping[str, Any] | None) -> str | None:
    """The server-side `labelSelector` of a labels filter (None: not expressible, or no filter)."""
    if not flt:
        return None
    parts = []
    for key, want in sorted(flt.items(), key=lambda kv: kv[0]):
        if want is kopf.PRESENT:
            parts.append(key)
        elif want is kopf.ABSENT:
            parts.append(f"!{key}")
        elif isinstance(want, str):
            parts.append(f"{key}={want}")
        else:
            return None
    return ",".join(parts)


@dataclass
class _Group:
    """The handlers of one resource that one stream feeds (same server-side selector)."""

    group: str
    version: str
    plural: str
    selector: str | None
    indexing: list[Any] = field(default_factory=list)
    watching: list[Any] = field(default_factory=list)

    def path(self, namespace: str | None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace:
            base += f"/namespaces/{namespace}"
        return f"{base}/{self.plural}"

    def describe(self, namespace: str | None) -> str:
        where = namespace or "all namespaces"
        sel = f" [{self.selector}]" if self.selector else ""
        return f"{self.plural}.{self.group or 'core'}{sel} in {where}"


def _handlers_of(registry: kopf.OperatorRegistry) -> tuple[list[Any], list[Any]]:
    return (
        list(registry._indexing.get_all_handlers()),
        list(registry._watching.get_all_handlers()),
    )


def plan_groups(registry: kopf.OperatorRegistry) -> list[_Group]:
    """One stream per resource and label selector; a resource with any handler whose label filter
    the server cannot apply gets one unfiltered stream for all its handlers."""
    indexing, watching = _handlers_of(registry)
    by_resource: dict[tuple[str, str, str], list[tuple[str, Any]]] = {}
    for kind, handlers in (("indexing", indexing), ("watching", watching)):
        for h in handlers:
            sel = h.selector
            plural = None if sel is None else (sel.plural or sel.any_name)
            if sel is None or sel.version is None or not plural or plural != plural.lower():
                raise ValueError(f"handler {h.id}: give group, version and the plural resource")
            if h.field is not None or h.value is not None:
                raise ValueError(f"handler {h.id}: field=/value= filters are not supported")
            key = (sel.group or "", sel.version, plural)
            by_resource.setdefault(key, []).append((kind, h))
    groups: list[_Group] = []
    for (group, version, plural), items in by_resource.items():
        selectors = {label_selector(h.labels) for _, h in items}
        if None in selectors:
            selectors = {None}  # one unfiltered stream, filters applied here
        made: dict[str | None, _Group] = {}
        for kind, h in items:
            sel_str = None if selectors == {None} else label_selector(h.labels)
            g = made.get(sel_str)
            if g is None:
                g = made[sel_str] = _Group(group, version, plural, sel_str)
                groups.append(g)
            getattr(g, kind).append(h)
    return groups


class _Lines:
    """Splits a JSON-lines body into lines, of any length, as its chunks arrive."""

    __slots__ = ("_buffer", "_on_line")

    def __init__(self, on_line: Callable[[bytes], None]) -> None:
        self._buffer = b""
        self._on_line = on_line

    def feed(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        start = 0
        index = buffer.find(b"\n")
        while index >= 0:
            if index > start:
                self._on_line(buffer[start:index])
            start = index + 1
            index = buffer.find(b"\n", start)
        self._buffer = buffer[start:] if start else buffer


class Watcher:
    """Feeds the index and event handlers of `registry` from the API server (see the module doc).

    `run()` returns only when cancelled; `ready` is set once every stream has listed and the
    listed objects went through the event handlers.
    """

    def __init__(
        self,
        registry: kopf.OperatorRegistry,
        indexes: Indexes,
        kube: AsyncKube,
        namespaces: Iterable[str] = (),
    ) -> None:
        self.kube = kube
        self.indexes = indexes
        self.namespaces: list[str | None] = list(namespaces) or [None]
        self.groups = plan_groups(registry)
        indexing, _ = _handlers_of(registry)
        for h in indexing:
            indexes.ensure(h.id)
        self.ready = asyncio.Event()
        self._listed = 0
        self._all_listed = asyncio.Event()

    @property
    def streams(self) -> int:
        return len(self.groups) * len(self.namespaces)

    async def run(self) -> None:
        if self.streams == 0:
            self._all_listed.set()
            self.ready.set()
        tasks = [
            asyncio.create_task(self._stream(g, ns), name=f"watch {g.describe(ns)}")
            for g in self.groups
            for ns in self.namespaces
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # --- HTTP --------------------------------------------------------------------------------

    async def _list(self, g: _Group, ns: str | None) -> tuple[list[JSON], str]:
        path = g.path(ns)
        items: list[JSON] = []
        query = {"limit": str(LIST_LIMIT)}
        if g.selector:
            query["labelSelector"] = g.selector
        while True:
            try:
                data = await self.kube.request("GET", path, query=query)
            except ApiError as exc:
                raise WatchError(f"list {g.describe(ns)}: {exc}") from exc
            items.extend(data.get("items") or [])
            meta = data.get("metadata") or {}
            if meta.get("continue"):
                query["continue"] = meta["continue"]
                continue
            return items, str(meta.get("resourceVersion") or "")

    # --- one stream --------------------------------------------------------------------------

    async def _stream(self, g: _Group, ns: str | None) -> None:
        known: dict[ObjKey, JSON] = {}  # what each listed/watched object looked like, lightly
        first = True
        failures = 0
        while True:
            try:
                items, rv = await self._list(g, ns)
            except (OSError, WatchError, TimeoutError) as exc:
                delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                log.warning("listing %s failed (retry in %.1fs): %s", g.describe(ns), delay, exc)
                await asyncio.sleep(delay)
                continue
            failures = 0
            seen: set[ObjKey] = set()
            for obj in items:
                seen.add(self._index(g, None, obj, known))
            gone = [k for k in known if k not in seen]
            if first:
                first = False
                self._listed += 1
                if self._listed >= self.streams:
                    self._all_listed.set()
                await self._all_listed.wait()
            for k in gone:
                self._dispatch(g, "DELETED", known[k], known)
            for obj in items:
                self._events(g, None, obj)
            if self._listed >= self.streams and not self.ready.is_set():
                self.ready.set()
            await self._watch(g, ns, rv, known)

    async def _watch(self, g: _Group, ns: str | None, rv: str, known: dict[ObjKey, JSON]) -> None:
        """Watch from `rv` until the resourceVersion is too old (then return: relist).

        Events are handled as their bytes arrive, in the connection's data callback: no task,
        queue or await per event.
        """
        path = g.path(ns)
        failures = 0
        state = {"rv": rv, "expired": False, "error": ""}
        count_event = WATCH_EVENTS.labels(g.plural).inc
        count_bytes = WATCH_BYTES.labels(g.plural).inc

        def on_line(line: bytes) -> None:
            if state["expired"] or state["error"]:
                return
            count_event()
            count_bytes(len(line))
            event = orjson.loads(line)
            etype = event.get("type")
            obj = event.get("object") or {}
            if etype == "ERROR":
                if obj.get("code") == 410:
                    state["expired"] = True
                else:
                    state["error"] = f"watch {g.describe(ns)}: {obj}"
                return
            state["rv"] = (obj.get("metadata") or {}).get("resourceVersion") or state["rv"]
            if etype in ("ADDED", "MODIFIED", "DELETED"):
                self._dispatch(g, etype, obj, known)

        while True:
            query = {
                "watch": "true",
                "allowWatchBookmarks": "true",
                "timeoutSeconds": str(WATCH_TIMEOUT),
                "resourceVersion": str(state["rv"]),
            }
            if g.selector:
                query["labelSelector"] = g.selector
            target = f"{path}?{urllib.parse.urlencode(query)}"
            try:
                status, body = await self.kube.http.stream(
                    target, self.kube.headers(path), _Lines(on_line).feed, WATCH_TIMEOUT + 60
                )
                if status == 410 or state["expired"]:
                    return
                if status >= 300:
                    raise WatchError(f"{status} {body[:200]!r}")
                if state["error"]:
                    raise WatchError(str(state["error"]))
                failures = 0
            except asyncio.CancelledError:
                raise
            except (OSError, WatchError, TimeoutError, ValueError) as exc:
                if state["expired"]:
                    return
                state["error"] = ""
                delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                log.warning("watch of %s broke (retry in %.1fs): %s", g.describe(ns), delay, exc)
                await asyncio.sleep(delay)

    # --- handlers ----------------------------------------------------------------------------

    @staticmethod
    def _kwargs(etype: str | None, obj: JSON) -> JSON:
        meta = obj.get("metadata") or {}
        return {
            "type": etype,
            "event": {"type": etype, "object": obj},
            "body": obj,
            "meta": meta,
            "spec": obj.get("spec") or {},
            "status": obj.get("status") or {},
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "labels": meta.get("labels") or {},
            "annotations": meta.get("annotations") or {},
            "logger": log,
            "memo": None,
        }

    @staticmethod
    def _matches(h: Any, kw: JSON) -> bool:
        return (
            _match_meta(kw["labels"], h.labels, kw)
            and _match_meta(kw["annotations"], h.annotations, kw)
            and (h.when is None or bool(h.when(**kw)))
        )

    def _index(
        self,
        g: _Group,
        etype: str | None,
        obj: JSON,
        known: dict[ObjKey, JSON],
        kw: JSON | None = None,
    ) -> ObjKey:
        """Run the index handlers of `g` on one object (synchronously: they must not wait)."""
        meta = obj.get("metadata") or {}
        key: ObjKey = (meta.get("namespace"), meta.get("name"), meta.get("uid"))
        if etype == "DELETED":
            known.pop(key, None)
            for h in g.indexing:
                self.indexes[h.id].discard(key)
            return key
        known[key] = {
            "metadata": {
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "labels": meta.get("labels") or {},
                "annotations": meta.get("annotations") or {},
                "ownerReferences": meta.get("ownerReferences") or [],
            }
        }
        if not g.indexing:
            return key
        if kw is None:
            kw = self._kwargs(etype, obj)
        for h in g.indexing:
            indexer = self.indexes[h.id]
            try:
                if not self._matches(h, kw):
                    indexer.discard(key)
                    continue
                result = _run_sync(h.fn(**kw))
            except Exception:
                log.exception("index handler %s failed on %s/%s", h.id, *key[:2])
                indexer.discard(key)
                continue
            if result is None:
                indexer.discard(key)
            else:
                indexer.replace(key, result)
        return key

    def _events(self, g: _Group, etype: str | None, obj: JSON, kw: JSON | None = None) -> None:
        """Run the event handlers of `g` on one object (synchronously: they only queue work)."""
        if not g.watching:
            return
        if kw is None:
            kw = self._kwargs(etype, obj)
        for h in g.watching:
            try:
                if self._matches(h, kw):
                    _run_sync(h.fn(**kw))
            except Exception:
                log.exception("event handler %s failed", h.id)

    def _dispatch(self, g: _Group, etype: str, obj: JSON, known: dict[ObjKey, JSON]) -> None:
        kw = self._kwargs(etype, obj)
        self._index(g, etype, obj, known, kw)
        self._events(g, etype, obj, kw)


def _run_sync(result: Any) -> Any:
    """The value of a handler's result; a coroutine is run to its end here if it never waits
    (index handlers only compute, event handlers only queue work)."""
    if not isinstance(result, CoroutineType):
        return result
    try:
        result.send(None)
    except StopIteration as stop:
        return stop.value
    result.close()
    raise RuntimeError("an index or event handler must not wait (await) on anything")


def lifecycle_registry(registry: kopf.OperatorRegistry) -> kopf.OperatorRegistry:
    """A registry with only the activity handlers of `registry` (login, startup, cleanup,
    probes): what kopf still runs when kubeforge's watch layer serves the resource handlers."""
    out = kopf.OperatorRegistry()
    for h in registry._activities.get_all_handlers():
        out._activities.append(h)
    return out

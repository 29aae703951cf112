"""The reconcile engine every kind uses: a de-duplicating work queue, one reconcile per object at
a time, retries with backoff, and a periodic resync.

Semantics of controller-runtime's workqueue: an object queued twice runs once; an object that
changes while it is being reconciled runs again right after; two reconciles of one object never
overlap (so events of children and of the parent cannot race). The snapshot of the observed
state is taken on the event loop (where the watch layer updates the indexes); the reconcile is a
coroutine on the same loop (its API calls through `kubeforge.apply.AsyncKube`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

from kubeforge.metrics import ERRORS, RECONCILE_SECONDS, RECONCILES

Key = tuple[str, str]
S = TypeVar("S")

log = logging.getLogger("kubeforge.controller")


class Controller(Generic[S]):
    """One kind's reconcile loop.

    - `snapshot(key)`: runs on the event loop, returns what the reconcile needs (or None: the
      object is gone);
    - `reconcile(key, snapshot)`: a coroutine function, awaited on the event loop (its API
      calls go through `AsyncKube`); returns None, or seconds after which to look again
      (polling, e.g. waiting for something outside the cluster);
    - `idle(key)` (optional): True when the object's current view is one its last reconcile
      found settled (the resync skips it: a resync of 1,000 settled objects then costs a few
      dict lookups each, not a trip through the queue);
    - `forget(key)` (optional): the object is gone — drop what the reconciler remembers of it
      (called after its running reconcile, if any, has finished: that one could otherwise
      write its memory back, and a new object of the same name would inherit it).
    """

    def __init__(
        self,
        kind: str,
        *,
        snapshot: Callable[[Key], S | None],
        reconcile: Callable[[Key, S], Awaitable[float | None]],
        workers: int = 16,
        max_backoff: float = 300.0,
        idle: Callable[[Key], bool] | None = None,
        forget: Callable[[Key], None] | None = None,
    ) -> None:
        # a function, or an object whose __call__ is a coroutine function
        call = reconcile if inspect.isroutine(reconcile) else type(reconcile).__call__
        if not inspect.iscoroutinefunction(call):
            raise TypeError(f"{kind}: the reconcile must be a coroutine function")
        self.kind = kind
        self._snapshot = snapshot
        self._reconcile = reconcile
        self._idle = idle
        self._forget = forget
        self._ok = RECONCILES.labels(kind, "ok")
        self._errors = RECONCILES.labels(kind, "error")
        self._seconds = RECONCILE_SECONDS.labels(kind)
        self._workers = workers
        self._max_backoff = max_backoff
        self._queue: asyncio.Queue[Key] | None = None
        self._queued: set[Key] = set()
        self._running: set[Key] = set()
        self._dirty: set[Key] = set()
        self._gone: set[Key] = set()
        self._failures: dict[Key, int] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._active: asyncio.Event | None = None
        self._paused = False

    # --- queue (event-loop thread only) ------------------------------------------------------

    def enqueue(self, key: Key) -> None:
        """Ask for a reconcile of `key` (cheap; duplicates fold into one)."""
        if self._queue is None:
            self._queue = asyncio.Queue()
        if key in self._running:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def enqueue_after(self, key: Key, delay: float) -> None:
        """Reconcile `key` again after `delay` seconds (an earlier request wins)."""
        loop = asyncio.get_running_loop()
        old = self._timers.get(key)
        when = loop.time() + delay
        if old is not None and old.when() <= when:
            return
        if old is not None:
            old.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.enqueue(key)

    def forget(self, key: Key) -> None:
        """The object is gone: drop its timers and failure count, and (once no reconcile of it
        runs) what the reconciler remembers of it."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._failures.pop(key, None)
        if key in self._running:
            self._gone.add(key)
        elif self._forget is not None:
            self._forget(key)

    @property
    def pending(self) -> int:
        """Objects queued or being reconciled."""
        return len(self._queued) + len(self._running)

    # --- workers ---------------------------------------------------------------------------

    def start(self, paused: bool = False) -> None:
        """Start the workers on the running loop (`paused`: they wait for `resume`)."""
        if self._queue is None:
            self._queue = asyncio.Queue()
        self._active = asyncio.Event()
        self._paused = paused
        if not paused:
            self._active.set()
        for i in range(self._workers):
            self._tasks.append(asyncio.create_task(self._work(), name=f"{self.kind}-worker-{i}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def pause(self) -> None:
        """Stop taking work (another replica leads): reconciles already running finish; what is
        queued stays queued."""
        self._paused = True
        if self._active is not None:
            self._active.clear()

    def resume(self, keys: Iterable[Key] = ()) -> None:
        """Take work again, first forgetting what the reconciler remembers (another replica may
        have written since) and queueing `keys` (every known object)."""
        for key in list(keys):
            self.forget(key)
            self.enqueue(key)
        self._paused = False
        if self._active is not None:
            self._active.set()

    @property
    def alive(self) -> bool:
        """Whether every worker is still running (False before `start`)."""
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    @property
    def paused(self) -> bool:
        return self._paused

    async def _work(self) -> None:
        assert self._queue is not None and self._active is not None
        while True:
            if not self._active.is_set():
                await self._active.wait()
            key = await self._queue.get()
            if not self._active.is_set():
                # paused while waiting: keep the key queued for whoever resumes us
                self._queue.put_nowait(key)
                await self._active.wait()
                continue
            self._queued.discard(key)
            self._running.add(key)
            try:
                await self._run_one(key)
            finally:
                self._running.discard(key)
                if key in self._gone:
                    self._gone.discard(key)
                    if self._forget is not None:
                        self._forget(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.enqueue(key)

    async def _run_one(self, key: Key) -> None:
        try:
            snap = self._snapshot(key)
        except Exception:
            log.exception("snapshot of %s %s/%s failed", self.kind, *key)
            return
        if snap is None:
            self.forget(key)
            return
        started = time.perf_counter()
        try:
            again = await self._reconcile(key, snap)
        except Exception as exc:
            self._errors.inc()
            ERRORS.labels(self.kind, type(exc).__name__).inc()
            n = self._failures.get(key, 0) + 1
            self._failures[key] = n
            delay = min(self._max_backoff, 0.5 * 2 ** (n - 1))
            log.warning(
                "reconcile of %s %s/%s failed (attempt %d, retry in %.1fs): %s",
                self.kind,
                *key,
                n,
                delay,
                exc,
                exc_info=n == 1,
            )
            self.enqueue_after(key, delay)
            return
        finally:
            self._seconds.observe(time.perf_counter() - started)
        self._ok.inc()
        self._failures.pop(key, None)
        if again is not None:
            self.enqueue_after(key, again)

    async def resync(self, keys: Callable[[], Iterable[Key]], period: float) -> None:
        """Every `period` seconds, queue every known object (a safety net: level-based
        reconciles write nothing when nothing differs) — except those `idle(key)` says the
        reconcile already found settled exactly as they are now."""
        idle = self._idle
        while True:
            await asyncio.sleep(period)
            for key in list(keys()):
                if idle is None or not idle(key):
                    self.enqueue(key)


def slim_owner(body: Any, kind: str, api_version: str, annotations: Iterable[str] = ()) -> dict[str, Any]:
    """The slim copy of one of our own objects kept in an index: identity, generation, spec and
    status, and only the named annotations (memory: what reconcile and status read)."""
    meta = body["metadata"]
    slim_meta: dict[str, Any] = {
        "name": meta["name"],
        "namespace": meta["namespace"],
        "uid": meta.get("uid"),
        "generation": meta.get("generation"),
        "deletionTimestamp": meta.get("deletionTimestamp"),
    }
    keep = set(annotations)
    if keep:
        slim_meta["annotations"] = {
            k: v for k, v in (meta.get("annotations") or {}).items() if k in keep
        }
    return {
        "apiVersion": body.get("apiVersion", api_version),
        "kind": kind,
        "metadata": slim_meta,
        "spec": body.get("spec") or {},
        "status": body.get("status") or {},
    }

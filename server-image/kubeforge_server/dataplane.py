"""The data plane: models by name, readiness, and inference with dynamic batching.

Transports (HTTP, gRPC) decode a request into an ``InferRequest``, wrap it in a ``Job`` with a
completion callback, and ``submit`` it. The event loop only queues and answers: every
``session.run`` happens on the model's worker thread (ONNX Runtime releases the GIL there), so a
slow model or a large batch never delays health checks, metrics or other connections.

A model runs one batch at a time. Requests that arrive while it runs wait in a bounded queue
(``--max-queue``, then 503 + Retry-After) and go together into the next run, up to
``max_batch_size`` rows. When the model is idle, a flush is scheduled with ``call_soon`` so every
request that arrived in the same event-loop turn is run together; while more keep arriving it
waits one more loop turn (never longer than ``max_delay`` after the oldest arrival).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from . import SERVER_NAME, __version__
from .codec import DEFAULT_LIMITS, DecodeLimits, InferRequest
from .errors import BadRequest, InferenceError, NotFound, Overloaded
from .metrics import Metrics, ModelMetrics
from .model import OnnxModel
from .shadow import Shadow

_now = time.perf_counter

Results = list[np.ndarray]
Completion = Callable[["Job", list[str], Results | None, InferenceError | None], None]
# One finished job: (job, output names, outputs or None, error or None).
Outcome = tuple["Job", list[str], Results | None, InferenceError | None]


class Job:
    """One request in flight. ``ctx`` belongs to the transport."""

    __slots__ = ("complete", "ctx", "req", "t0")

    def __init__(self, req: InferRequest, t0: float, complete: Completion, ctx: Any) -> None:
        self.req = req
        self.t0 = t0
        self.complete = complete
        self.ctx = ctx


def _ort_error(exc: BaseException) -> InferenceError:
    kind = type(exc).__name__
    if kind in ("InvalidArgument", "NotImplemented") or isinstance(exc, ValueError | TypeError):
        return BadRequest(f"model run failed: {exc}")
    return InferenceError(f"model run failed: {type(exc).__name__}: {exc}")


class _RunReport:
    """What a worker-thread run hands back to the loop (metrics are only touched there)."""

    __slots__ = ("outcomes", "rows", "run_seconds", "started")

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []
        self.started = 0.0
        self.run_seconds = 0.0
        self.rows = 0


class Batcher:
    def __init__(
        self,
        model: OnnxModel,
        metrics: ModelMetrics,
        max_batch_size: int,
        max_delay_s: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.model = model
        self.metrics = metrics
        self.max_batch = max(1, max_batch_size)
        self.max_delay = max(0.0, max_delay_s)
        self.loop = loop
        self.enabled = self.max_batch > 1 and model.batchable
        # One thread per model, fed through a SimpleQueue: cheaper per hand-off than an
        # executor's futures (two thread wake-ups per run are the whole cost).
        self._runs: queue.SimpleQueue[tuple[list[Job], int] | None] = queue.SimpleQueue()
        self.worker = threading.Thread(
            target=self._worker_loop, name=f"run-{model.name}"[:15], daemon=True
        )
        self.worker.start()
        self.queue: deque[Job] = deque()
        self.queued_rows = 0
        self.scheduled = False
        self.running = False
        self.seen = 0

    def submit(self, job: Job) -> None:
        self.queue.append(job)
        self.queued_rows += max(job.req.rows, 1)
        if not self.scheduled and not self.running:
            self.scheduled = True
            self.loop.call_soon(self._flush)

    def _batchable(self, job: Job) -> bool:
        return 1 <= job.req.rows < self.max_batch

    def _flush(self) -> None:
        self.scheduled = False
        q = self.queue
        n = len(q)
        if n == 0 or self.running:
            return
        if (
            self.enabled
            and n > 1
            and n > self.seen
            and self.queued_rows < self.max_batch
            and _now() - q[0].t0 < self.max_delay
        ):
            # Requests are still arriving: gather for one more loop turn.
            self.seen = n
            self.scheduled = True
            self.loop.call_soon(self._flush)
            return
        self.seen = 0
        first = q.popleft()
        batch = [first]
        rows = max(first.req.rows, 1)
        if self.enabled and self._batchable(first):
            while q and self._batchable(q[0]) and rows + q[0].req.rows <= self.max_batch:
                job = q.popleft()
                rows += job.req.rows
                batch.append(job)
        self.queued_rows -= rows
        self.running = True
        self._runs.put((batch, rows))

    def stop(self) -> None:
        self._runs.put(None)

    def _done(self, report: _RunReport) -> None:
        self.running = False
        m = self.metrics
        if report.rows:
            m.inference.observe(report.run_seconds)
            m.batch_size.observe(report.rows)
        for job, names, outs, err in report.outcomes:
            m.queue.observe(max(0.0, report.started - job.t0))
            job.complete(job, names, outs, err)
        if self.queue and not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._flush)

    # -- on the worker thread ---------------------------------------------------------------------
    def _worker_loop(self) -> None:
        while (item := self._runs.get()) is not None:
            batch, rows = item
            try:
                report = self._work(batch, rows)
            except BaseException as exc:  # pragma: no cover - _work catches what the model raises
                report = _RunReport()
                err = InferenceError(f"model run failed: {type(exc).__name__}: {exc}")
                report.outcomes = [(job, [], None, err) for job in batch]
            try:
                self.loop.call_soon_threadsafe(self._done, report)
            except RuntimeError:  # the loop is closed: shutting down
                return

    def _work(self, batch: list[Job], rows: int) -> _RunReport:
        report = _RunReport()
        report.started = _now()
        if len(batch) == 1:
            self._run_single(batch[0], report)
        else:
            self._run_batch(batch, rows, report)
        return report

    def _run_single(self, job: Job, report: _RunReport) -> None:
        model = self.model
        req = job.req
        names = req.output_names or model.output_names
        t = _now()
        try:
            outs = model.run(req.feed, names)
        except Exception as exc:
            report.outcomes.append((job, names, None, _ort_error(exc)))
            return
        report.run_seconds += _now() - t
        report.rows += req.rows if req.rows > 0 else 1
        report.outcomes.append((job, names, outs, None))

    def _run_batch(self, batch: list[Job], rows: int, report: _RunReport) -> None:
        first = batch[0].req.feed
        try:
            feed = {}
            for name, arr in first.items():
                tail = arr.shape[1:]
                parts = [arr]
                for job in batch[1:]:
                    other = job.req.feed[name]
                    if other.shape[1:] != tail:
                        raise ValueError("shapes differ")
                    parts.append(other)
                feed[name] = np.concatenate(parts)
        except ValueError:
            for job in batch:
                self._run_single(job, report)
            return
        model = self.model
        t = _now()
        try:
            outs = model.run(feed, model.output_names)
        except Exception:
            # Isolate the failing request: run each alone so the others still succeed.
            for job in batch:
                self._run_single(job, report)
            return
        if any(o.ndim == 0 or o.shape[0] != rows for o in outs):
            for job in batch:
                self._run_single(job, report)
            return
        report.run_seconds += _now() - t
        report.rows += rows
        index = model.output_index
        start = 0
        for job in batch:
            stop = start + job.req.rows
            names = job.req.output_names or model.output_names
            report.outcomes.append((job, names, [outs[index[n]][start:stop] for n in names], None))
            start = stop


class ModelEntry:
    def __init__(
        self,
        model: OnnxModel,
        batcher: Batcher,
        metrics: ModelMetrics,
        limits: DecodeLimits = DEFAULT_LIMITS,
        max_queue: int = 256,
    ) -> None:
        self.model = model
        self.batcher = batcher
        self.metrics = metrics
        self.limits = limits
        self.max_queue = max_queue
        self.metadata_json = orjson.dumps(model.metadata())
        self.shadow: Shadow | None = None
        """The mirror to a candidate server (a progressive rollout's shadow), when configured."""


class DataPlane:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.entries: dict[str, ModelEntry] = {}
        self.draining = False
        self.server_metadata_json = orjson.dumps(
            {"name": SERVER_NAME, "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    def add_model(
        self,
        model: OnnxModel,
        *,
        max_batch_size: int,
        max_delay_ms: float,
        loop: asyncio.AbstractEventLoop,
        limits: DecodeLimits = DEFAULT_LIMITS,
        max_queue: int = 256,
    ) -> ModelEntry:
        mm = self.metrics.for_model(model.name)
        mm.sha256 = model.sha256
        entry = ModelEntry(
            model,
            Batcher(model, mm, max_batch_size, max_delay_ms / 1000.0, loop),
            mm,
            limits,
            max_queue,
        )
        self.entries[model.name] = entry
        model.ready = True
        self.metrics.model_ready[model.name] = True
        self.metrics.model_info[model.name] = {
            "sha256": model.sha256,
            "uri": model.uri,
            "provider": model.providers[0] if model.providers else "",
        }
        return entry

    @property
    def ready(self) -> bool:
        return (
            bool(self.entries)
            and not self.draining
            and all(e.model.ready for e in self.entries.values())
        )

    def start_draining(self) -> None:
        self.draining = True
        for name in self.entries:
            self.metrics.model_ready[name] = False

    def model_ready(self, entry: ModelEntry) -> bool:
        return entry.model.ready and not self.draining

    def get(self, name: str, version: str | None = None) -> ModelEntry:
        entry = self.entries.get(name)
        if entry is None:
            raise NotFound(f"model {name!r} is not served here (models: {sorted(self.entries)})")
        if version not in (None, "", entry.model.version):
            raise NotFound(
                f"model {name!r} has no version {version!r} (versions: [{entry.model.version!r}])"
            )
        return entry

    @staticmethod
    def check_queue(entry: ModelEntry) -> None:
        if entry.metrics.inflight >= entry.max_queue:
            raise Overloaded(
                f"model {entry.model.name!r} has {entry.metrics.inflight} requests queued or "
                f"running, its limit (--max-queue {entry.max_queue}); retry shortly"
            )

    def submit(self, entry: ModelEntry, job: Job) -> None:
        """Queue a job; raises Overloaded when the model's queue is full (nothing queued then)."""
        self.check_queue(entry)
        entry.metrics.inflight += 1
        entry.batcher.submit(job)

    def close(self) -> None:
        for entry in self.entries.values():
            entry.batcher.stop()

    async def infer(self, entry: ModelEntry, req: InferRequest) -> tuple[list[str], Results]:
        """Awaitable inference (gRPC); HTTP uses ``submit`` with a callback directly."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[list[str], Results]] = loop.create_future()

        def done(
            job: Job, names: list[str], results: Results | None, err: InferenceError | None
        ) -> None:
            entry.metrics.inflight -= 1
            if fut.done():
                return
            if err is not None:
                fut.set_exception(err)
            else:
                assert results is not None
                fut.set_result((names, results))

        self.submit(entry, Job(req, _now(), done, None))
        return await fut

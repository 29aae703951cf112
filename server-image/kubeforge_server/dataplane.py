"""The data plane: models by name, readiness, and inference with dynamic batching.

Transports (HTTP, gRPC) decode a request into an ``InferRequest``, wrap it in a ``Job`` with a
completion callback, and ``submit`` it. Everything runs on the event loop thread: a batch-1 run of
a small model costs tens of microseconds, less than handing it to another thread would.

Dynamic batching: a submitted job is queued and a flush is scheduled with ``call_soon``, so every
request that arrived in the same event-loop turn is run together. When a flush sees several jobs
and more keep arriving, it waits one more loop turn (never longer than ``max_delay`` after the
oldest arrival, never beyond ``max_batch_size`` rows). A lone request runs at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from . import SERVER_NAME, __version__
from .codec import InferRequest
from .errors import BadRequest, InferenceError, NotFound
from .metrics import Metrics, ModelMetrics
from .model import OnnxModel

_now = time.perf_counter

Results = list[np.ndarray]
Completion = Callable[["Job", list[str], Results | None, InferenceError | None], None]


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
        self.queue: deque[Job] = deque()
        self.queued_rows = 0
        self.scheduled = False
        self.seen = 0

    def submit(self, job: Job) -> None:
        rows = job.req.rows
        if not self.enabled or rows < 1 or rows >= self.max_batch:
            self._run_single(job)
            return
        self.queue.append(job)
        self.queued_rows += rows
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.scheduled = False
        q = self.queue
        n = len(q)
        if n == 0:
            return
        if (
            n > 1
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
        batch = [q.popleft()]
        rows = batch[0].req.rows
        while q and rows + q[0].req.rows <= self.max_batch:
            job = q.popleft()
            rows += job.req.rows
            batch.append(job)
        self.queued_rows -= rows
        if len(batch) == 1:
            self._run_single(batch[0])
        else:
            self._run_batch(batch, rows)
        if q and not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._flush)

    def _run_single(self, job: Job) -> None:
        m = self.metrics
        model = self.model
        req = job.req
        t = _now()
        m.queue.observe(t - job.t0)
        names = req.output_names or model.output_names
        try:
            outs = model.run(req.feed, names)
        except Exception as exc:
            job.complete(job, names, None, _ort_error(exc))
            return
        m.inference.observe(_now() - t)
        m.batch_size.observe(req.rows if req.rows > 0 else 1)
        job.complete(job, names, outs, None)

    def _run_batch(self, batch: list[Job], rows: int) -> None:
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
                self._run_single(job)
            return
        m = self.metrics
        model = self.model
        t = _now()
        for job in batch:
            m.queue.observe(t - job.t0)
        try:
            outs = model.run(feed, model.output_names)
        except Exception:
            # Isolate the failing request: run each alone so the others still succeed.
            for job in batch:
                self._run_single(job)
            return
        if any(o.ndim == 0 or o.shape[0] != rows for o in outs):
            for job in batch:
                self._run_single(job)
            return
        m.inference.observe(_now() - t)
        m.batch_size.observe(rows)
        index = model.output_index
        start = 0
        for job in batch:
            stop = start + job.req.rows
            names = job.req.output_names or model.output_names
            job.complete(job, names, [outs[index[n]][start:stop] for n in names], None)
            start = stop


class ModelEntry:
    def __init__(self, model: OnnxModel, batcher: Batcher, metrics: ModelMetrics) -> None:
        self.model = model
        self.batcher = batcher
        self.metrics = metrics
        self.metadata_json = orjson.dumps(model.metadata())


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
    ) -> ModelEntry:
        mm = self.metrics.for_model(model.name)
        entry = ModelEntry(
            model, Batcher(model, mm, max_batch_size, max_delay_ms / 1000.0, loop), mm
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

    def submit(self, entry: ModelEntry, job: Job) -> None:
        entry.metrics.inflight += 1
        entry.batcher.submit(job)

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

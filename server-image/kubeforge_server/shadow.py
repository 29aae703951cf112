"""Shadow mirroring: the stable server copies a share of its answered requests to a candidate
server and counts whether the candidate's outputs agree with its own.

Off the request path by construction: a request is offered to the mirror only after its answer
was handed to the client's connection; the offer is a counter bump and, for a sampled request
within the budget, one encode onto a bounded queue (full: the copy is dropped and counted),
drained over a few keep-alive connections by callbacks. A slow, failing or absent candidate
never slows or fails a client: the worst it does is fill the queue, and copies are then
dropped. The mirror's own work on the event loop is bounded by a time budget (``budget``):
beyond it copies are dropped, so a saturated server samples instead of slowing down.

Agreement, per mirrored request (every output the candidate returns must agree):
- a classifier output (floating point, at least 2 dimensions, last dimension > 1: class scores
  or logits) agrees when the argmax over the last dimension is the same in every row;
- an integer or boolean output (labels) agrees when equal;
- any other output (regression values, embeddings) agrees when the largest absolute difference
  is within ``tolerance``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httptools
import numpy as np
import orjson

from .codec import InferRequest
from .encode import bytes_from_array
from .model import NP_FROM_V2, V2_FROM_NP

log = logging.getLogger("kubeforge_server.shadow")

OUTCOMES = ("agreed", "disagreed", "failed", "dropped")
"""How each offered copy ended: compared (agreed / disagreed), the candidate failed (error status,
timeout, unreachable, unreadable answer), or dropped (the queue was full)."""


@dataclass(frozen=True)
class ShadowConfig:
    url: str
    """Base URL of the candidate (e.g. http://md-candidate.ns.svc.cluster.local:8080)."""
    percent: float = 100.0
    tolerance: float = 1e-3
    queue: int = 64
    concurrency: int = 4
    timeout: float = 5.0
    budget: float = 0.05
    """Share of the event loop's wall time the mirror's own work may take."""


_now = time.perf_counter


def outputs_agree(
    stable: Sequence[np.ndarray], candidate: Sequence[np.ndarray], tolerance: float
) -> bool:
    """Whether a candidate's outputs agree with the stable model's (see the module docstring)."""
    if len(stable) != len(candidate):
        return False
    for a, b in zip(stable, candidate, strict=True):
        if a.shape != b.shape:
            return False
        if a.dtype == object or b.dtype == object:
            if not np.array_equal(a, b):
                return False
        elif a.dtype.kind == "f" and a.ndim >= 2 and a.shape[-1] > 1:
            if not np.array_equal(np.argmax(a, axis=-1), np.argmax(b, axis=-1)):
                return False
        elif a.dtype.kind in "iub":
            if not np.array_equal(a, b):
                return False
        elif a.size and float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) > (
            tolerance
        ):
            return False
    return True


def encode_mirror_request(req: InferRequest, names: list[str]) -> tuple[bytes, int] | None:
    """The copy sent to the candidate: the decoded inputs in the binary tensor extension, every
    output asked for as binary. None for inputs the extension cannot carry here (BYTES)."""
    inputs: list[dict[str, Any]] = []
    parts: list[bytes] = []
    for name, arr in req.feed.items():
        datatype = V2_FROM_NP.get(arr.dtype)
        if datatype is None:
            return None
        raw = bytes_from_array(arr)
        parts.append(raw)
        inputs.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(arr.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        )
    head = orjson.dumps(
        {
            "inputs": inputs,
            "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in names],
        }
    )
    return head + b"".join(parts), len(head)


def decode_mirror_response(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    """The candidate's outputs by name (binary or JSON data). Raises ValueError when unreadable."""
    head = body if header_length is None else body[:header_length]
    doc = orjson.loads(head)
    offset = len(head)
    out: dict[str, np.ndarray] = {}
    for o in doc.get("outputs") or []:
        dtype = NP_FROM_V2.get(o.get("datatype"))
        if dtype is None or dtype.kind == "O":
            raise ValueError(f"output {o.get('name')!r}: datatype {o.get('datatype')!r}")
        shape = tuple(int(d) for d in o.get("shape") or [])
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            arr = np.frombuffer(body, dtype=dtype, count=int(size) // dtype.itemsize,
                                offset=offset)
            offset += int(size)
        else:
            arr = np.asarray(o.get("data"), dtype=dtype)
        out[str(o["name"])] = arr.reshape(shape)
    return out


class _MirrorConnection(asyncio.Protocol):
    """One keep-alive connection to the candidate, one mirrored request at a time; responses
    are parsed with httptools (the server's own parser), all in callbacks: no task per copy."""

    def __init__(self, shadow: Shadow) -> None:
        self.shadow = shadow
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.item: _Copy | None = None
        self.sent_at = 0.0
        self.body = bytearray()
        self.header_length: int | None = None

    # asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.shadow._ready(self)

    def data_received(self, data: bytes) -> None:
        t0 = _now()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._close()
        finally:
            self.shadow.spend(_now() - t0)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.shadow._lost(self)

    # httptools
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"inference-header-content-length":
            try:
                self.header_length = int(value)
            except ValueError:
                self.header_length = None

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        item, self.item = self.item, None
        status = self.parser.get_status_code()
        body, self.body = bytes(self.body), bytearray()
        header_length, self.header_length = self.header_length, None
        if item is not None:
            self.shadow.judge(item, status, body, header_length)
        if not self.parser.should_keep_alive():
            self._close()
        else:
            self.shadow._ready(self)

    def send(self, item: _Copy, head: bytes) -> None:
        assert self.transport is not None
        self.item = item
        self.sent_at = _now()
        self.transport.write(head + item.body)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Copy:
    __slots__ = ("body", "header_length", "names", "results")

    def __init__(
        self, body: bytes, header_length: int, names: list[str], results: list[np.ndarray]
    ) -> None:
        self.body = body
        self.header_length = header_length
        self.names = names
        self.results = results


class Shadow:
    """The mirror of one served model to its candidate.

    Bounded three ways: copies waiting (``queue``, more are dropped), connections
    (``concurrency``), and the event loop's time (``budget``: the share of wall time the mirror's
    own work — encoding copies, writing them, parsing and comparing answers — may take; beyond
    it copies are dropped, so mirroring 100% of a saturated server samples instead of slowing
    it).
    """

    BUDGET_BURST = 0.02
    """Seconds of mirror work that may be spent ahead of the budget (a burst)."""

    def __init__(self, cfg: ShadowConfig, model_name: str, counts: dict[str, int]) -> None:
        self.cfg = cfg
        self.model_name = model_name
        self.counts = counts
        """Outcome → count (exported as kubeforge_server_shadow_requests_total)."""
        url = urlsplit(cfg.url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"--shadow-url: expected http://HOST[:PORT], got {cfg.url!r}")
        self.host, self.port = url.hostname, url.port or 80
        path = f"{url.path.rstrip('/')}/v2/models/{model_name}/infer"
        self._head = (
            f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            "Content-Type: application/octet-stream\r\n"
        ).encode()
        self._share = max(0.0, min(100.0, cfg.percent)) / 100.0
        self._offered = 0.0
        self._pending: deque[_Copy] = deque()
        self._idle: list[_MirrorConnection] = []
        self._conns: set[_MirrorConnection] = set()
        self._connecting = 0
        self._retry_at = 0.0
        self._credit = self.BUDGET_BURST
        self._credit_at = _now()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(1.0, self._check_timeouts)
        log.info(
            "shadow: mirroring %.0f%% of answered requests to http://%s:%d (at most %.0f%% of "
            "the event loop's time)", self.cfg.percent, self.host, self.port, self.cfg.budget * 100
        )

    # -- the request path: a few comparisons, then (sampled, in budget) one encode ---------------
    def offer(self, req: InferRequest, names: list[str], results: list[np.ndarray]) -> None:
        """Called after a successful answer was handed to the client: never blocks, never
        raises. An even share (deterministic, no randomness) of the offers is mirrored. The copy
        is encoded here, while the request's input buffers are still valid (they may point into
        a connection's buffer that the next request reuses)."""
        self._offered += self._share
        if self._offered < 1.0:
            return
        self._offered -= 1.0
        t0 = _now()
        self._credit = min(self.BUDGET_BURST,
                           self._credit + (t0 - self._credit_at) * self.cfg.budget)
        self._credit_at = t0
        if len(self._pending) >= self.cfg.queue or self._credit <= 0 or self._closed:
            self.counts["dropped"] += 1
            return
        try:
            encoded = encode_mirror_request(req, names)
        except Exception:  # pragma: no cover - defensive: the client was answered already
            encoded = None
        if encoded is None:
            self.counts["failed"] += 1
            return
        self._pending.append(_Copy(encoded[0], encoded[1], names, results))
        self._pump()
        self.spend(_now() - t0)

    def spend(self, seconds: float) -> None:
        self._credit -= seconds

    # -- sending ------------------------------------------------------------------------------
    def _pump(self) -> None:
        while self._pending and self._idle:
            conn = self._idle.pop()
            item = self._pending.popleft()
            head = self._head + (
                f"Inference-Header-Content-Length: {item.header_length}\r\n"
                f"Content-Length: {len(item.body)}\r\n\r\n"
            ).encode()
            conn.send(item, head)
        if (
            self._pending
            and len(self._conns) + self._connecting < self.cfg.concurrency
            and _now() >= self._retry_at
            and self._loop is not None
        ):
            self._connecting += 1
            self._loop.create_task(self._connect())

    async def _connect(self) -> None:
        assert self._loop is not None
        try:
            await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: _MirrorConnection(self), self.host, self.port
                ),
                self.cfg.timeout,
            )
        except (TimeoutError, OSError) as exc:
            log.debug("shadow: cannot connect to %s:%d: %s", self.host, self.port, exc)
            self._retry_at = _now() + 0.5
            # what waits cannot be sent now: each copy counts as a failed mirror
            self.counts["failed"] += len(self._pending)
            self._pending.clear()
        finally:
            self._connecting -= 1

    def _ready(self, conn: _MirrorConnection) -> None:
        self._conns.add(conn)
        if self._closed:
            conn._close()
            return
        self._idle.append(conn)
        self._pump()

    def _lost(self, conn: _MirrorConnection) -> None:
        self._conns.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        if conn.item is not None:
            conn.item = None
            self.counts["failed"] += 1
        if self._pending and not self._closed:
            self._pump()

    def _check_timeouts(self) -> None:
        now = _now()
        for conn in list(self._conns):
            if conn.item is not None and now - conn.sent_at > self.cfg.timeout:
                conn._close()  # connection_lost counts it as failed
        if self._pending and not self._closed:
            self._pump()  # copies left waiting after a failed connect: try again
        if not self._closed and self._loop is not None:
            self._timer = self._loop.call_later(1.0, self._check_timeouts)

    # -- judging ------------------------------------------------------------------------------
    def judge(self, item: _Copy, status: int, body: bytes, header_length: int | None) -> None:
        if status != 200:
            self.counts["failed"] += 1
            return
        t0 = _now()
        try:
            outs = decode_mirror_response(body, header_length)
            candidate = [outs[n] for n in item.names]
        except (ValueError, KeyError, TypeError):
            self.counts["failed"] += 1
            return
        agree = outputs_agree(item.results, candidate, self.cfg.tolerance)
        self.counts["agreed" if agree else "disagreed"] += 1
        self.spend(_now() - t0)

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for conn in list(self._conns):
            conn._close()
        self._pending.clear()


__all__ = [
    "OUTCOMES",
    "Shadow",
    "ShadowConfig",
    "decode_mirror_response",
    "encode_mirror_request",
    "outputs_agree",
]

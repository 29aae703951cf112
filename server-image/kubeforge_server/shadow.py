"""Shadow mirroring: the stable server copies a share of its answered requests to a candidate
server and counts whether the candidate's outputs agree with its own.

Off the request path by construction: a request is offered to the mirror only after its answer
was handed to the client's connection, the offer is a counter bump and a ``put_nowait`` on a
bounded queue (full: the copy is dropped and counted), and a few sender tasks drain the queue
over keep-alive connections. A slow, failing or absent candidate therefore never slows or fails
a client: the worst it does is fill the queue, and copies are then dropped.

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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


class Shadow:
    """The mirror of one served model to its candidate."""

    def __init__(self, cfg: ShadowConfig, model_name: str, counts: dict[str, int]) -> None:
        self.cfg = cfg
        self.model_name = model_name
        self.counts = counts
        """Outcome → count (exported as kubeforge_server_shadow_requests_total)."""
        self.infer_url = f"{cfg.url.rstrip('/')}/v2/models/{model_name}/infer"
        self._share = max(0.0, min(100.0, cfg.percent)) / 100.0
        self._credit = 0.0
        self._queue: asyncio.Queue[tuple[bytes, int, list[str], list[np.ndarray]]]
        self._queue = asyncio.Queue(maxsize=max(1, cfg.queue))
        self._tasks: list[asyncio.Task[None]] = []
        self._session: Any = None

    def start(self) -> None:
        import aiohttp  # imported only when a shadow is configured

        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.cfg.timeout),
            connector=aiohttp.TCPConnector(limit=max(1, self.cfg.concurrency)),
        )
        self._tasks = [
            asyncio.ensure_future(self._sender()) for _ in range(max(1, self.cfg.concurrency))
        ]
        log.info("shadow: mirroring %.0f%% of requests to %s", self.cfg.percent, self.infer_url)

    def offer(self, req: InferRequest, names: list[str], results: list[np.ndarray]) -> None:
        """Called after a successful answer was handed to the client: never blocks, never
        raises. An even share (deterministic, no randomness) of the offers is queued. The copy
        is encoded here, while the request's input buffers are still valid (they may point into
        a connection's buffer that the next request reuses)."""
        self._credit += self._share
        if self._credit < 1.0:
            return
        self._credit -= 1.0
        if self._queue.full():
            self.counts["dropped"] += 1
            return
        try:
            encoded = encode_mirror_request(req, names)
        except Exception:  # pragma: no cover - defensive: the client was answered already
            encoded = None
        if encoded is None:
            self.counts["failed"] += 1
            return
        self._queue.put_nowait((encoded[0], encoded[1], names, results))

    async def _sender(self) -> None:
        while True:
            body, header_length, names, results = await self._queue.get()
            try:
                self.counts[await self._mirror(body, header_length, names, results)] += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a candidate's failure is a count, never a crash
                log.debug("shadow: %s", exc)
                self.counts["failed"] += 1

    async def _mirror(
        self, body: bytes, header_length: int, names: list[str], results: list[np.ndarray]
    ) -> str:
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(header_length),
        }
        async with self._session.post(self.infer_url, data=body, headers=headers) as resp:
            data = await resp.read()
            if resp.status != 200:
                return "failed"
            hl = resp.headers.get("Inference-Header-Content-Length")
        try:
            outs = decode_mirror_response(data, int(hl) if hl else None)
            candidate = [outs[n] for n in names]
        except (ValueError, KeyError, TypeError):
            return "failed"
        return "agreed" if outputs_agree(results, candidate, self.cfg.tolerance) else "disagreed"

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()


__all__ = [
    "OUTCOMES",
    "Shadow",
    "ShadowConfig",
    "decode_mirror_response",
    "encode_mirror_request",
    "outputs_agree",
]

"""HTTP routing, inference hand-off and the limits shared by all connections.

``HttpApp`` owns what is global to the HTTP side: the connection registry (capped), the budget
of buffered request bytes, the timer that enforces header/body/keep-alive timeouts, and routing.
The per-connection framing lives in ``http_server.HttpProtocol``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote

import orjson

from .codec import InferRequest, decode_json_request, precheck_head
from .dataplane import DataPlane, Job, ModelEntry, Results
from .encode import encode_json_response
from .errors import BadRequest, InferenceError, MethodNotAllowed, NotFound
from .http_wire import JSON, OCTET, TEXT_METRICS, error_body
from .memory import trim_malloc
from .metrics import Metrics
from .offload import offload

if TYPE_CHECKING:
    from .http_server import HttpProtocol

log = logging.getLogger("kubeforge_server.http")
_now = time.perf_counter

# Bodies up to this size are decoded on the loop and do not count against the buffered-bytes
# budget (a connection holds at most one such body, and connections are capped).
SMALL_BODY = 64 * 1024
# Body bytes the loop copies in one turn before the connections still sending bodies wait a turn:
# a flood of large uploads then costs each loop turn a few milliseconds, not tens.
BULK_PER_TURN = 2 * 1024 * 1024

_GET = "GET, HEAD"


@dataclass(frozen=True)
class HttpLimits:
    max_request_bytes: int = 64 * 1024 * 1024
    max_json_bytes: int = 2 * 1024 * 1024
    max_connections: int = 1000
    max_buffered_bytes: int = 256 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 65.0


class HttpApp:
    """Routing and shared state for all HTTP connections."""

    def __init__(
        self, dataplane: DataPlane, metrics: Metrics, limits: HttpLimits | None = None
    ) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self.limits = limits or HttpLimits()
        self.connections: set[HttpProtocol] = set()
        self.buffered = 0  # bytes of request bodies held (reserved) right now
        self.released_since_trim = 0
        self.trim_at = 0.0
        self.draining = False
        self.drain_started = 0.0
        self.accepted = 0  # infer requests read completely
        self.served = 0  # infer requests answered (any status)
        self.refused_connections = 0
        self._infer_paths: dict[bytes, ModelEntry] = {}
        self._decoder = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="decode")
        self._timer: asyncio.TimerHandle | None = None
        self.bulk_this_turn = 0
        self._bulk_waiting: list[HttpProtocol] = []

    def protocol_factory(self) -> HttpProtocol:
        from .http_server import HttpProtocol

        return HttpProtocol(self)

    def model_added(self, entry: ModelEntry) -> None:
        self._infer_paths[f"/v2/models/{entry.model.name}/infer".encode()] = entry
        self._infer_paths[
            f"/v2/models/{entry.model.name}/versions/{entry.model.version}/infer".encode()
        ] = entry

    # -- budget of buffered request bytes ---------------------------------------------------------
    def reserve(self, size: int) -> bool:
        if self.buffered + size > self.limits.max_buffered_bytes:
            return False
        self.buffered += size
        return True

    def release(self, size: int) -> None:
        self.buffered -= size
        self.released_since_trim += size

    # -- fairness between bulk uploads and everything else -------------------------------------------
    def bulk_read(self, conn: HttpProtocol, size: int) -> bool:
        """Count body bytes read this turn; False (and a resume next turn) once over the quota."""
        self.bulk_this_turn += size
        if self.bulk_this_turn <= BULK_PER_TURN:
            return True
        if not self._bulk_waiting:
            asyncio.get_running_loop().call_soon(self._next_turn)
        self._bulk_waiting.append(conn)
        return False

    def _next_turn(self) -> None:
        self.bulk_this_turn = 0
        waiting, self._bulk_waiting = self._bulk_waiting, []
        for conn in waiting:
            conn.bulk_resume()

    # -- timeouts -----------------------------------------------------------------------------------
    def start_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        lim = self.limits
        self._tick = max(0.05, min(0.25, lim.header_timeout / 4, lim.keepalive_timeout / 4))
        self._due = _now() + self._tick
        self._timer = loop.call_later(self._tick, self._check_timeouts, loop)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._decoder.shutdown(wait=False)

    def _check_timeouts(self, loop: asyncio.AbstractEventLoop) -> None:
        now = _now()
        metrics = self.metrics
        metrics.loop_lag.observe(max(0.0, now - self._due))
        metrics.open_connections = len(self.connections)
        metrics.buffered_bytes = self.buffered
        for conn in list(self.connections):
            conn.check_timeouts(now)
        if self.released_since_trim > 16 * 1024 * 1024:
            # Trim once the refused connections' lingering buffers are gone too.
            self.released_since_trim = 0
            self.trim_at = now + 1.5
        if self.trim_at and now >= self.trim_at and self.buffered == 0:
            self.trim_at = 0.0
            loop.run_in_executor(self._decoder, trim_malloc)
        self._due = _now() + self._tick
        self._timer = loop.call_later(self._tick, self._check_timeouts, loop)

    # -- draining ---------------------------------------------------------------------------------
    def start_draining(self) -> None:
        self.draining = True
        self.drain_started = _now()

    def close_idle(self, idle_for: float) -> None:
        """Close connections that owe no answer and sent nothing for ``idle_for`` seconds since
        draining began: a client between two requests gets the chance to send one more and read
        its ``connection: close`` answer; one stuck halfway through a request (never accepted)
        does not hold the shutdown up."""
        now = _now()
        for conn in list(self.connections):
            if (
                conn.owes_nothing()
                and now - max(conn.last_activity, self.drain_started) >= idle_for
            ):
                conn.close()

    def precheck(self, url: bytes, head: memoryview) -> None:
        """Validate a binary request's JSON head before its tensor bytes are read (raises)."""
        q = url.find(b"?")
        entry = self._infer_paths.get(url if q < 0 else url[:q])
        if entry is not None:
            precheck_head(entry.model, head, entry.limits)

    # -- dispatch ---------------------------------------------------------------------------------
    def dispatch(
        self,
        conn: HttpProtocol,
        seq: int,
        method: bytes,
        url: bytes,
        body: bytes | memoryview,
        header_length: bytes | None,
        t0: float,
    ) -> None:
        q = url.find(b"?")
        path = url if q < 0 else url[:q]
        entry = self._infer_paths.get(path)
        if entry is not None and method == b"POST":
            self.infer(conn, seq, entry, body, header_length, t0)
            return
        extra = b""
        try:
            code, payload, ctype = self.route(conn, seq, method, path, body, header_length, t0)
        except InferenceError as exc:
            code, payload, ctype, extra = exc.status, error_body(exc.message), JSON, exc.headers
        except Exception as exc:  # pragma: no cover - defensive
            log.exception("unexpected error handling %s %s", method, url)
            code, payload, ctype = (
                500,
                error_body(f"internal error: {type(exc).__name__}: {exc}"),
                JSON,
            )
        if code:
            conn.respond(seq, code, payload, ctype, extra=extra)

    def route(
        self,
        conn: HttpProtocol,
        seq: int,
        method: bytes,
        path: bytes,
        body: bytes | memoryview,
        header_length: bytes | None,
        t0: float,
    ) -> tuple[int, bytes, bytes]:
        dp = self.dataplane
        p = unquote(path.decode("latin-1"))
        if p.endswith("/") and len(p) > 1:
            p = p[:-1]
        is_get = method in (b"GET", b"HEAD")

        def only_get() -> None:
            if not is_get:
                raise MethodNotAllowed(method.decode(), _GET)

        if p == "/v2/health/live":
            only_get()
            return 200, b'{"live":true}', JSON
        if p == "/v2/health/ready":
            only_get()
            return (200, b'{"ready":true}', JSON) if dp.ready else (503, b'{"ready":false}', JSON)
        if p == "/metrics":
            only_get()
            return 200, self.metrics.render(), TEXT_METRICS
        if p == "/v2":
            only_get()
            return 200, dp.server_metadata_json, JSON
        if p.startswith("/v2/models/"):
            parts = p[len("/v2/models/") :].split("/")
            name, version = parts[0], None
            rest = parts[1:]
            if len(rest) >= 2 and rest[0] == "versions":
                version, rest = rest[1], rest[2:]
            if rest == [] or rest == ["ready"] or rest == ["infer"]:
                entry = dp.get(name, version)
                if rest == []:
                    only_get()
                    return 200, entry.metadata_json, JSON
                if rest == ["ready"]:
                    only_get()
                    ok = dp.model_ready(entry)
                    return (200 if ok else 503), orjson.dumps({"name": name, "ready": ok}), JSON
                if method != b"POST":
                    raise MethodNotAllowed(method.decode(), "POST")
                self.infer(conn, seq, entry, body, header_length, t0)
                return 0, b"", b""
        if p in ("/v2/models", "/v2/repository/index"):
            if method != b"POST" and p == "/v2/models":
                raise MethodNotAllowed(method.decode(), "POST")
            return (
                200,
                orjson.dumps(
                    [
                        {
                            "name": n,
                            "version": e.model.version,
                            "state": "READY" if dp.model_ready(e) else "UNAVAILABLE",
                        }
                        for n, e in dp.entries.items()
                    ]
                ),
                JSON,
            )
        if p == "/":
            only_get()
            return 200, dp.server_metadata_json, JSON
        raise NotFound(f"no route for {method.decode()} {p}")

    # -- inference ----------------------------------------------------------------------------------
    def infer(
        self,
        conn: HttpProtocol,
        seq: int,
        entry: ModelEntry,
        body: bytes | memoryview,
        header_length: bytes | None,
        t0: float,
    ) -> None:
        self.accepted += 1
        try:
            hl = None
            if header_length is not None:
                try:
                    hl = int(header_length)
                except ValueError:
                    raise BadRequest("Inference-Header-Content-Length must be an integer") from None
            self.dataplane.check_queue(entry)  # before decoding: a full queue costs nothing
            if len(body) <= SMALL_BODY:
                req = decode_json_request(entry.model, body, hl, entry.limits)
            else:
                # Large tensors are decoded on a worker thread; the loop keeps serving.
                offload(
                    self._decoder,
                    asyncio.get_running_loop(),
                    decode_json_request,
                    (entry.model, body, hl, entry.limits),
                    lambda req, err: self._decoded(req, err, conn, seq, entry, t0),
                )
                return
        except InferenceError as exc:
            self._fail(conn, seq, entry, exc, t0)
            return
        self._submit(conn, seq, entry, req, t0)

    def _decoded(
        self,
        req: InferRequest | None,
        err: BaseException | None,
        conn: HttpProtocol,
        seq: int,
        entry: ModelEntry,
        t0: float,
    ) -> None:
        if isinstance(err, InferenceError):
            self._fail(conn, seq, entry, err, t0)
        elif err is not None or req is None:  # pragma: no cover - defensive
            log.error("decoding request failed: %r", err)
            self._fail(conn, seq, entry, InferenceError(f"internal error: {err}"), t0)
        else:
            self._submit(conn, seq, entry, req, t0)

    def _submit(
        self, conn: HttpProtocol, seq: int, entry: ModelEntry, req: InferRequest, t0: float
    ) -> None:
        try:
            self.dataplane.submit(entry, Job(req, t0, self._complete, (conn, seq, entry)))
        except InferenceError as exc:
            self._fail(conn, seq, entry, exc, t0)

    def _fail(
        self, conn: HttpProtocol, seq: int, entry: ModelEntry, exc: InferenceError, t0: float
    ) -> None:
        self._finish(
            conn, seq, entry, exc.status, error_body(exc.message), JSON, None, t0, exc.headers
        )

    def _complete(
        self, job: Job, names: list[str], results: Results | None, err: InferenceError | None
    ) -> None:
        conn, seq, entry = job.ctx
        entry.metrics.inflight -= 1
        if err is not None:
            self._fail(conn, seq, entry, err, job.t0)
            return
        assert results is not None
        req: InferRequest = job.req
        try:
            body, hl = encode_json_response(entry.model, req, names, results)
        except Exception as exc:  # pragma: no cover - defensive
            log.exception("encoding response failed")
            self._fail(conn, seq, entry, InferenceError(f"cannot encode outputs: {exc}"), job.t0)
            return
        self._finish(conn, seq, entry, 200, body, JSON if hl is None else OCTET, hl, job.t0)
        if entry.shadow is not None:  # after the answer: the mirror never delays the client
            entry.shadow.offer(req, names, results)

    def _finish(
        self,
        conn: HttpProtocol,
        seq: int,
        entry: ModelEntry,
        code: int,
        body: bytes,
        ctype: bytes,
        header_length: int | None,
        t0: float,
        extra: bytes = b"",
    ) -> None:
        conn.respond(seq, code, body, ctype, header_length, extra)
        self.served += 1
        entry.metrics.request_done("http", code, _now() - t0)


__all__ = ["HttpApp", "HttpLimits"]

"""HTTP/1.1 transport for the Open Inference Protocol: an asyncio Protocol on httptools.

No framework: the parser's callbacks collect the few headers that matter, the body is handed to the
codec, and the response is one ``transport.write``. Keep-alive and pipelining are supported;
responses go out in request order even when a batched inference finishes later than a health
check behind it. Reading pauses while too many responses are outstanding or the socket's write
buffer is full.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import unquote

import httptools
import orjson

from .codec import InferRequest, decode_json_request, encode_json_response
from .dataplane import DataPlane, Job, ModelEntry, Results
from .errors import BadRequest, InferenceError, NotFound
from .metrics import Metrics

log = logging.getLogger("kubeforge_server.http")
_now = time.perf_counter

_REASONS = {
    100: b"Continue",
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Payload Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}
_STATUS = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in _REASONS.items()}
_JSON = b"application/json"
_OCTET = b"application/octet-stream"
_TEXT_METRICS = b"text/plain; version=0.0.4; charset=utf-8"
_MAX_OUTSTANDING = 64  # pipelined requests per connection before reading pauses
_MAX_URL = 8192
_MAX_HEADERS = 100


def _status_line(code: int) -> bytes:
    line = _STATUS.get(code)
    return line if line is not None else b"HTTP/1.1 %d Status\r\n" % code


def build_response(
    code: int,
    body: bytes,
    ctype: bytes = _JSON,
    close: bool = False,
    header_length: int | None = None,
) -> bytes:
    extra = (
        b"inference-header-content-length: %d\r\n" % header_length
        if header_length is not None
        else b""
    )
    return b"%scontent-type: %s\r\ncontent-length: %d\r\n%s%s\r\n%s" % (
        _status_line(code),
        ctype,
        len(body),
        extra,
        b"connection: close\r\n" if close else b"",
        body,
    )


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


class _Abort(Exception):
    """Raised from a parser callback after a final error response has been queued."""


class HttpApp:
    """Routing and shared state for all HTTP connections."""

    def __init__(self, dataplane: DataPlane, metrics: Metrics, max_request_bytes: int) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self.connections: set[HttpProtocol] = set()
        self.draining = False
        self.drain_started = 0.0
        self.accepted = 0  # infer requests read completely
        self.served = 0  # infer requests answered (any status)
        self._infer_paths: dict[bytes, ModelEntry] = {}

    def protocol_factory(self) -> HttpProtocol:
        return HttpProtocol(self)

    def model_added(self, entry: ModelEntry) -> None:
        self._infer_paths[f"/v2/models/{entry.model.name}/infer".encode()] = entry
        self._infer_paths[
            f"/v2/models/{entry.model.name}/versions/{entry.model.version}/infer".encode()
        ] = entry

    # -- draining ---------------------------------------------------------------------------------
    def start_draining(self) -> None:
        self.draining = True
        self.drain_started = _now()

    def close_idle(self, idle_for: float) -> None:
        """Close connections quiet for ``idle_for`` seconds since draining began (or since their last
        request): a client between two requests gets the chance to send one more and read its
        ``connection: close`` answer instead of racing a silent close."""
        now = _now()
        for conn in list(self.connections):
            if conn.is_idle() and now - max(conn.last_activity, self.drain_started) >= idle_for:
                conn.close()

    # -- dispatch ---------------------------------------------------------------------------------
    def dispatch(
        self,
        conn: HttpProtocol,
        seq: int,
        method: bytes,
        url: bytes,
        body: bytes,
        header_length: bytes | None,
        t0: float,
    ) -> None:
        q = url.find(b"?")
        path = url if q < 0 else url[:q]
        entry = self._infer_paths.get(path)
        if entry is not None and method == b"POST":
            self.infer(conn, seq, entry, body, header_length, t0)
            return
        try:
            code, payload, ctype = self.route(conn, seq, method, path, body, header_length, t0)
        except InferenceError as exc:
            code, payload, ctype = exc.status, error_body(exc.message), _JSON
        except Exception as exc:  # pragma: no cover - defensive
            log.exception("unexpected error handling %s %s", method, url)
            code, payload, ctype = (
                500,
                error_body(f"internal error: {type(exc).__name__}: {exc}"),
                _JSON,
            )
        if code:
            conn.respond(seq, code, payload, ctype)

    def route(
        self,
        conn: HttpProtocol,
        seq: int,
        method: bytes,
        path: bytes,
        body: bytes,
        header_length: bytes | None,
        t0: float,
    ) -> tuple[int, bytes, bytes]:
        dp = self.dataplane
        p = unquote(path.decode("latin-1"))
        if p.endswith("/") and len(p) > 1:
            p = p[:-1]
        is_get = method in (b"GET", b"HEAD")
        if p == "/v2/health/live":
            return (200, b'{"live":true}', _JSON) if is_get else self._method(method)
        if p == "/v2/health/ready":
            if not is_get:
                return self._method(method)
            return (200, b'{"ready":true}', _JSON) if dp.ready else (503, b'{"ready":false}', _JSON)
        if p == "/metrics":
            return (200, self.metrics.render(), _TEXT_METRICS) if is_get else self._method(method)
        if p == "/v2":
            return (200, dp.server_metadata_json, _JSON) if is_get else self._method(method)
        if p.startswith("/v2/models/"):
            parts = p[len("/v2/models/") :].split("/")
            name, version = parts[0], None
            rest = parts[1:]
            if len(rest) >= 2 and rest[0] == "versions":
                version, rest = rest[1], rest[2:]
            if rest == [] or rest == ["ready"] or rest == ["infer"]:
                entry = dp.get(name, version)
                if rest == []:
                    return (200, entry.metadata_json, _JSON) if is_get else self._method(method)
                if rest == ["ready"]:
                    if not is_get:
                        return self._method(method)
                    ok = dp.model_ready(entry)
                    return (200 if ok else 503), orjson.dumps({"name": name, "ready": ok}), _JSON
                if method != b"POST":
                    return self._method(method)
                self.infer(conn, seq, entry, body, header_length, t0)
                return 0, b"", b""
        if (
            p in ("/v2/models", "/v2/repository/index") and method == b"POST"
        ) or p == "/v2/repository/index":
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
                _JSON,
            )
        if p == "/" and is_get:
            return 200, dp.server_metadata_json, _JSON
        raise NotFound(f"no route for {method.decode()} {p}")

    @staticmethod
    def _method(method: bytes) -> tuple[int, bytes, bytes]:
        return 405, error_body(f"method {method.decode()} not allowed here"), _JSON

    # -- inference ----------------------------------------------------------------------------------
    def infer(
        self,
        conn: HttpProtocol,
        seq: int,
        entry: ModelEntry,
        body: bytes,
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
            req = decode_json_request(entry.model, body, hl)
        except InferenceError as exc:
            self._finish(conn, seq, entry, exc.status, error_body(exc.message), _JSON, None, t0)
            return
        except Exception as exc:  # pragma: no cover - defensive
            log.exception("decoding request failed")
            self._finish(
                conn, seq, entry, 500, error_body(f"internal error: {exc}"), _JSON, None, t0
            )
            return
        self.dataplane.submit(entry, Job(req, t0, self._complete, (conn, seq, entry)))

    def _complete(
        self, job: Job, names: list[str], results: Results | None, err: InferenceError | None
    ) -> None:
        conn, seq, entry = job.ctx
        entry.metrics.inflight -= 1
        if err is not None:
            self._finish(conn, seq, entry, err.status, error_body(err.message), _JSON, None, job.t0)
            return
        assert results is not None
        req: InferRequest = job.req
        try:
            body, hl = encode_json_response(entry.model, req, names, results)
        except Exception as exc:  # pragma: no cover - defensive
            log.exception("encoding response failed")
            self._finish(
                conn,
                seq,
                entry,
                500,
                error_body(f"cannot encode outputs: {exc}"),
                _JSON,
                None,
                job.t0,
            )
            return
        self._finish(conn, seq, entry, 200, body, _JSON if hl is None else _OCTET, hl, job.t0)

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
    ) -> None:
        conn.respond(seq, code, body, ctype, header_length)
        self.served += 1
        entry.metrics.request_done("http", code, _now() - t0)


class HttpProtocol(asyncio.Protocol):
    __slots__ = (
        "aborted",
        "app",
        "body",
        "body_size",
        "close_after",
        "closed",
        "expect_continue",
        "header_count",
        "header_length",
        "in_message",
        "keep_alive",
        "last_activity",
        "next_seq",
        "next_write",
        "out",
        "parser",
        "reading_paused",
        "transport",
        "url",
        "write_paused",
    )

    def __init__(self, app: HttpApp) -> None:
        self.app = app
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.body_size = 0
        self.header_length: bytes | None = None
        self.header_count = 0
        self.expect_continue = False
        self.in_message = False
        self.next_seq = 0  # sequence number of the next request
        self.next_write = 0  # sequence number of the next response to write
        self.out: dict[int, bytes] = {}  # responses finished out of order
        self.close_after: int | None = None
        self.closed = False
        self.aborted = False
        self.reading_paused = False
        self.write_paused = False
        self.last_activity = _now()

    # -- asyncio callbacks ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.app.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.app.connections.discard(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._maybe_resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.aborted:
            return
        self.last_activity = _now()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # the request was handled as plain HTTP/1.1; upgrades are not offered
        except httptools.HttpParserCallbackError as exc:
            if not self.aborted:
                log.exception("HTTP handler error", exc_info=exc.__context__ or exc)
                self._fatal(500, "internal error")
        except httptools.HttpParserError as exc:
            if not self.aborted:
                self._fatal(400, f"malformed HTTP request: {exc}")

    def eof_received(self) -> bool | None:
        if self.aborted:
            return None
        # Half-closed by the client: answer what is outstanding, then close.
        if self.next_write == self.next_seq and not self.in_message:
            return None  # close now
        self.close_after = (
            self.next_seq - 1
            if self.close_after is None
            else min(self.close_after, self.next_seq - 1)
        )
        return True

    # -- httptools callbacks ---------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.in_message = True
        self.url = b""
        self.body = []
        self.body_size = 0
        self.header_length = None
        self.header_count = 0
        self.expect_continue = False

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > _MAX_URL:
            self._fatal(431, "request URL too long")
            raise _Abort

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        if self.header_count > _MAX_HEADERS:
            self._fatal(431, "too many request headers")
            raise _Abort
        n = len(name)
        if n == 14:
            if name.lower() == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    size = 0
                if size > self.app.max_request_bytes:
                    self._fatal(
                        413,
                        f"request body of {size} bytes exceeds the limit of {self.app.max_request_bytes}",
                    )
                    raise _Abort
        elif n == 31:
            if name.lower() == b"inference-header-content-length":
                self.header_length = value
        elif n == 6 and name.lower() == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True

    def on_headers_complete(self) -> None:
        if self.expect_continue and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.app.max_request_bytes:
            self._fatal(
                413, f"request body exceeds the limit of {self.app.max_request_bytes} bytes"
            )
            raise _Abort
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        seq = self.next_seq
        self.next_seq = seq + 1
        parser = self.parser
        if not parser.should_keep_alive() or self.app.draining:
            self.close_after = seq if self.close_after is None else min(self.close_after, seq)
        body = self.body
        data = body[0] if len(body) == 1 else b"".join(body)
        self.body = []
        if seq - self.next_write >= _MAX_OUTSTANDING:
            self._pause_reading()
        self.app.dispatch(
            self, seq, parser.get_method(), self.url, data, self.header_length, _now()
        )

    # -- responses -------------------------------------------------------------------------------------
    def respond(
        self,
        seq: int,
        code: int,
        body: bytes,
        ctype: bytes = _JSON,
        header_length: int | None = None,
    ) -> None:
        if self.closed:
            return
        close = self.app.draining or (self.close_after is not None and seq >= self.close_after)
        data = build_response(code, body, ctype, close, header_length)
        if seq != self.next_write:
            self.out[seq] = data
            return
        transport = self.transport
        assert transport is not None
        transport.write(data)
        seq += 1
        out = self.out
        while out:
            nxt = out.pop(seq, None)
            if nxt is None:
                break
            transport.write(nxt)
            seq += 1
        self.next_write = seq
        self.last_activity = _now()
        if self.close_after is not None and seq > self.close_after:
            if self.aborted and transport.can_write_eof():
                # Half-close so the client reads the error while we discard the rest of its body.
                transport.write_eof()
                asyncio.get_running_loop().call_later(2.0, self.close)
            else:
                self.close()
        elif self.app.draining and seq == self.next_seq and not self.in_message:
            self.close()
        elif self.reading_paused:
            self._maybe_resume_reading()

    def is_idle(self) -> bool:
        return self.next_write == self.next_seq and not self.in_message

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def _fatal(self, code: int, message: str) -> None:
        """Answer with an error after everything already queued, then close (body not read)."""
        self.aborted = True
        seq = self.next_seq
        self.next_seq = seq + 1
        self.in_message = False
        self.close_after = seq
        self.respond(seq, code, error_body(message))

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        if (
            self.reading_paused
            and not self.write_paused
            and self.next_seq - self.next_write < _MAX_OUTSTANDING // 2
            and self.transport is not None
            and not self.aborted
        ):
            self.reading_paused = False
            self.transport.resume_reading()


__all__: list[Any] = ["HttpApp", "HttpProtocol", "build_response"]

"""HTTP/1.1 framing for the Open Inference Protocol: an asyncio Protocol on httptools.

No framework: the parser's callbacks collect the few headers that matter, the body is handed to
``HttpApp``, and each response is one ``transport.write``. Keep-alive and pipelining are
supported; responses go out in request order even when a batched inference finishes later than a
health check behind it. Every resource a client can hold is bounded (``HttpLimits``):

- request line + headers: ``max_header_bytes`` (counted as bytes arrive, so an endless header
  cannot grow memory) and ``max_headers`` → 431;
- the whole request head must arrive within ``header_timeout`` and the body within
  ``body_timeout`` of the head → 408 and close; an idle keep-alive connection closes after
  ``keepalive_timeout`` (a fresh one that sends nothing, after ``header_timeout``);
- body: ``max_request_bytes`` (declared or streamed) → 413; a JSON body (no binary part) above
  ``max_json_bytes`` → 413 pointing at the binary extension; bodies above 64 KiB reserve their
  size in the app's ``max_buffered_bytes`` budget first, or get 503 + Retry-After;
- a client that half-closes or resets mid-request is closed at once (nothing is left in
  CLOSE-WAIT); one that half-closes after complete requests still gets their answers;
- ``Upgrade`` (h2c, websocket) and CONNECT are refused with 400 and close; HEAD answers carry the
  GET headers and no body.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import httptools
import numpy as np

from ._http_connection import (
    _BODY,
    _HEAD,
    _IDLE,
    _MAX_OUTSTANDING,
    _NEW,
    _RETRY,
    HttpConnection,
    _now,
)
from .codec import json_too_large
from .errors import InferenceError
from .http_app import SMALL_BODY, HttpApp
from .http_wire import build_response

log = logging.getLogger("kubeforge_server.http")


class _Abort(Exception):
    """Raised from a parser callback after a final error response has been queued."""


class HttpProtocol(HttpConnection):
    """Reading requests: httptools' callbacks, every limit checked as the bytes arrive."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        if self.aborted or self.closed:
            return
        self.last_activity = _now()
        before = self.phase
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if not self.aborted:  # CONNECT (an Upgrade header is refused in on_headers_complete)
                self._fatal(400, "CONNECT and protocol upgrades are not supported")
            return
        except httptools.HttpParserCallbackError as exc:
            if not self.aborted:
                log.exception("HTTP handler error", exc_info=exc.__context__ or exc)
                self._fatal(500, "internal error")
            return
        except httptools.HttpParserError as exc:
            if not self.aborted:
                self._fatal(400, f"malformed HTTP request: {exc}")
            return
        if self.phase in (_NEW, _HEAD) and before != _BODY and not self.aborted:
            # httptools buffers a header until it ends: count what arrives, not what it hands us.
            self.head_bytes += len(data)
            if self.head_bytes > self.app.limits.max_header_bytes:
                self._fatal(431, self._header_limit_message())

    def eof_received(self) -> bool | None:
        # The client half-closed. A request it was still sending can never complete: drop it.
        # Answers it is owed still go out (then we close); with none owed, close now.
        if self.aborted or self.next_write == self.next_seq:
            self._release_reading()
            return None
        self.aborted = True  # ignore anything more; the answers owed are written, then close
        self._release_reading()
        last = self.next_seq - 1
        self.close_after = last if self.close_after is None else min(self.close_after, last)
        return True

    # -- timeouts (called by the app's timer) ---------------------------------------------------------
    def check_timeouts(self, now: float) -> None:
        if self.closed:
            return
        limits = self.app.limits
        phase = self.phase
        if phase == _IDLE:
            if self.owes_nothing() and now - self.last_activity > limits.keepalive_timeout:
                self.close()
        elif now > self.deadline and not self.aborted:
            if phase == _NEW:
                self.close()
            elif phase == _HEAD:
                self._fatal(408, f"request head not received within {limits.header_timeout:g} s")
            else:
                self._fatal(408, f"request body not received within {limits.body_timeout:g} s")

    # -- httptools callbacks ---------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.phase != _NEW:
            self.deadline = _now() + self.app.limits.header_timeout
        self.phase = _HEAD
        self.url = b""
        self.body = []
        self.buf = None
        self.body_size = 0
        self.content_length = None
        self.header_length = None
        self.head_to_check = 0
        self.header_count = 0
        self.expect_continue = False
        self.upgrade = False

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.app.limits.max_header_bytes:
            self._fatal(431, "request URL too long: " + self._header_limit_message())
            raise _Abort

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        if self.header_count > self.app.limits.max_headers:
            self._fatal(431, f"more than {self.app.limits.max_headers} request headers")
            raise _Abort
        n = len(name)
        if n == 14:
            if name.lower() == b"content-length":
                try:
                    self.content_length = int(value)
                except ValueError:
                    self.content_length = None  # the parser rejects it
        elif n == 31:
            if name.lower() == b"inference-header-content-length":
                self.header_length = value
        elif n == 6 and name.lower() == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True
        elif n == 7 and name.lower() == b"upgrade":
            self.upgrade = True

    def on_headers_complete(self) -> None:
        app = self.app
        limits = app.limits
        self.method = self.parser.get_method()
        if self.upgrade:
            self._fatal(
                400,
                "protocol upgrades (h2c, websocket) are not supported: speak HTTP/1.1 here, "
                "or gRPC on the gRPC port",
            )
            raise _Abort
        size = self.content_length
        if size is not None:
            if size > limits.max_request_bytes:
                self._fatal(
                    413,
                    f"request body of {size} bytes exceeds the limit of "
                    f"{limits.max_request_bytes} bytes (--max-request-bytes)",
                )
                raise _Abort
            if self.header_length is None and size > limits.max_json_bytes:
                self._fatal(413, json_too_large(size, limits.max_json_bytes).message)
                raise _Abort
            if size > SMALL_BODY:
                if not app.reserve(size):
                    self._fatal(
                        503,
                        f"the server holds {app.buffered} bytes of request bodies, its budget "
                        f"(--max-buffered-bytes {limits.max_buffered_bytes}); retry shortly",
                        _RETRY,
                    )
                    raise _Abort
                self.reserved = size
                self.buf = np.empty(size, np.uint8)
                if self.header_length is not None and self.method == b"POST":
                    with contextlib.suppress(ValueError):
                        self.head_to_check = int(self.header_length)
        self.phase = _BODY
        self.head_bytes = 0
        self.deadline = _now() + limits.body_timeout
        if self.expect_continue and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        start = self.body_size
        size = start + len(body)
        self.body_size = size
        buf = self.buf
        if buf is not None:
            # The parser never hands more than Content-Length.
            buf[start:size] = np.frombuffer(body, np.uint8)
            if not self.app.bulk_read(self, len(body)):
                self._pause_reading()
            hl = self.head_to_check
            if hl and size >= hl:
                self.head_to_check = 0
                try:
                    self.app.precheck(self.url, buf[:hl].data)
                except InferenceError as exc:
                    self._fatal(exc.status, exc.message)
                    raise _Abort from None
            return
        limits = self.app.limits
        # Chunked: no length up front, so check and reserve as it grows.
        if size > limits.max_request_bytes:
            self._fatal(413, f"request body exceeds the limit of {limits.max_request_bytes} bytes")
            raise _Abort
        if self.header_length is None and size > limits.max_json_bytes:
            self._fatal(413, json_too_large(size, limits.max_json_bytes).message)
            raise _Abort
        if size > SMALL_BODY:
            grow = size - max(self.reserved, SMALL_BODY)
            if grow > 0:
                if not self.app.reserve(grow):
                    self._fatal(503, "buffered request bytes over budget; retry shortly", _RETRY)
                    raise _Abort
                self.reserved += grow
        self.body.append(body)

    def on_message_complete(self) -> None:
        seq = self.next_seq
        self.next_seq = seq + 1
        self.phase = _IDLE
        parser = self.parser
        if not parser.should_keep_alive() or self.app.draining:
            self.close_after = seq if self.close_after is None else min(self.close_after, seq)
        data: bytes | memoryview
        if self.buf is not None:
            data = self.buf.data
            self.buf = None
        else:
            body = self.body
            data = body[0] if len(body) == 1 else b"".join(body)
            self.body = []
        if self.reserved:
            self.held[seq] = self.reserved
            self.reserved = 0
        method = self.method
        if method == b"HEAD":
            self.head_seqs.add(seq)
        if seq - self.next_write >= _MAX_OUTSTANDING:
            self._pause_reading()
        self.app.dispatch(self, seq, method, self.url, data, self.header_length, _now())

    def _header_limit_message(self) -> str:
        return f"request head exceeds {self.app.limits.max_header_bytes} bytes (--max-header-bytes)"


__all__: list[Any] = ["HttpApp", "HttpProtocol", "build_response"]

"""One HTTP connection's state and its answers: written in request order, with flow control,
the request-body budget given back, and the close after an error or a drain."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import httptools
import numpy as np

from .http_wire import build_response, error_body

if TYPE_CHECKING:
    from .http_app import HttpApp

_now = time.perf_counter
_MAX_OUTSTANDING = 64  # pipelined requests per connection before reading pauses
_RETRY = b"retry-after: 1\r\n"

# Where a connection is: before any request, reading a head, reading a body, or between requests.
_NEW, _HEAD, _BODY, _IDLE = 0, 1, 2, 3


class HttpConnection(asyncio.Protocol):
    """The state every connection carries and how it answers; `HttpProtocol` adds the reading."""

    __slots__ = (
        "aborted",
        "app",
        "body",
        "body_size",
        "buf",
        "close_after",
        "closed",
        "content_length",
        "deadline",
        "expect_continue",
        "head_bytes",
        "head_seqs",
        "head_to_check",
        "header_count",
        "header_length",
        "held",
        "last_activity",
        "linger",
        "method",
        "next_seq",
        "next_write",
        "out",
        "parser",
        "phase",
        "reading_paused",
        "reserved",
        "transport",
        "upgrade",
        "url",
        "write_paused",
    )

    def __init__(self, app: HttpApp) -> None:
        self.app = app
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.method = b""
        self.body: list[bytes] = []
        # The body, when its length was declared up front: uninitialised memory filled chunk by
        # chunk (a zeroed bytearray or a final join would touch every page at once, on the loop).
        self.buf: np.ndarray | None = None
        self.body_size = 0
        self.content_length: int | None = None
        self.reserved = 0  # budget bytes held by the body being read
        self.held: dict[int, int] = {}  # budget bytes held by requests awaiting their answer
        self.header_length: bytes | None = None
        self.head_to_check = 0  # length of a binary request's JSON head still to be checked
        self.header_count = 0
        self.head_bytes = 0
        self.expect_continue = False
        self.upgrade = False
        self.phase = _NEW
        self.deadline = _now() + app.limits.header_timeout
        self.next_seq = 0  # sequence number of the next request
        self.next_write = 0  # sequence number of the next response to write
        self.out: dict[int, bytes] = {}  # responses finished out of order
        self.head_seqs: set[int] = set()  # HEAD requests: answer without the body
        self.close_after: int | None = None
        self.closed = False
        self.aborted = False
        self.linger = False  # after an error answer: half-close, let the client read it, close
        self.reading_paused = False
        self.write_paused = False
        self.last_activity = _now()

    # -- asyncio callbacks ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        app = self.app
        if len(app.connections) >= app.limits.max_connections:
            app.refused_connections += 1
            self.closed = True
            self.transport.write(  # type: ignore[union-attr]
                build_response(
                    503,
                    error_body(
                        f"too many connections (--max-connections {app.limits.max_connections})"
                    ),
                    close=True,
                    extra=_RETRY,
                )
            )
            transport.close()
            return
        app.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.app.connections.discard(self)
        self._release_all()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._maybe_resume_reading()


    # -- responses -------------------------------------------------------------------------------------
    def respond(
        self,
        seq: int,
        code: int,
        body: bytes,
        ctype: bytes = b"application/json",
        header_length: int | None = None,
        extra: bytes = b"",
    ) -> None:
        held = self.held.pop(seq, 0)
        if held:
            self.app.release(held)
        if self.closed:
            return
        close = self.app.draining or (self.close_after is not None and seq >= self.close_after)
        head = False
        if self.head_seqs:
            head = seq in self.head_seqs
            self.head_seqs.discard(seq)
        data = build_response(code, body, ctype, close, header_length, extra, head)
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
            if self.linger and transport.can_write_eof():
                # The client may still be sending the body we refused: closing now would reset
                # the connection before it reads the answer.
                transport.write_eof()
                asyncio.get_running_loop().call_later(1.0, self.close)
            else:
                self.close()
        elif self.app.draining and seq == self.next_seq and self.phase == _IDLE:
            self.close()
        elif self.reading_paused:
            self._maybe_resume_reading()

    def owes_nothing(self) -> bool:
        """No answer outstanding (a request being received is not yet accepted)."""
        return self.next_write == self.next_seq

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()
        self._release_all()

    def _fatal(self, code: int, message: str, extra: bytes = b"") -> None:
        """Answer with an error after everything already queued, then close (rest not read)."""
        self.aborted = True
        self.linger = True
        self._release_reading()
        self._pause_reading()  # read nothing more of a request we refused
        seq = self.next_seq
        self.next_seq = seq + 1
        self.phase = _IDLE
        self.close_after = seq
        self.respond(seq, code, error_body(message), extra=extra)

    def _release_reading(self) -> None:
        """Give back the budget of a body that will never be completed."""
        self.buf = None
        self.body = []
        if self.reserved:
            self.app.release(self.reserved)
            self.reserved = 0

    def _release_all(self) -> None:
        self._release_reading()
        if self.held:
            for size in self.held.values():
                self.app.release(size)
            self.held.clear()

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def bulk_resume(self) -> None:
        """The app's next turn: read on (unless paused for another reason)."""
        self._maybe_resume_reading()

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

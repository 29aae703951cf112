"""The operator's HTTP/1.1 transport to the API server: keep-alive connections on the event loop,
responses parsed by httptools (llhttp).

Why not aiohttp or urllib3: measured on the local control plane (`benchmarks/bench_operator.py`
and 1,000 POSTs at concurrency 16, client process CPU per request): urllib3 from 16 threads
0.91-1.03 ms, aiohttp on uvloop 0.46-0.49 ms, this transport on uvloop 0.17 ms. The API server
is one host speaking HTTP/1.1 with JSON bodies, so the client needs little: a pool of idle
connections, one request per connection at a time, Content-Length or chunked bodies, and
streamed bodies for watches.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

import httptools

ChunkSink = Callable[[bytes], None]


class HttpClosed(ConnectionError):
    """The connection closed before the whole response arrived."""


class _Response:
    __slots__ = ("body", "reason", "status")

    def __init__(self, status: int, reason: str, body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.body = body


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time; the answer whole, or streamed to a
    sink (watches) once its status says success."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.keep_alive = True
        self._waiter: asyncio.Future[_Response] | None = None
        self._sink: ChunkSink | None = None
        self._streaming = False
        self._reason = b""
        self._body: list[bytes] = []
        self._status = 0

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass; it has the same methods
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(HttpClosed(f"bad HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.fail(HttpClosed(str(exc) if exc else "connection closed by the API server"))

    # --- httptools callbacks ------------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_headers_complete(self) -> None:
        self._status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        if self._sink is not None and self._status < 300:
            self._streaming = True

    def on_body(self, body: bytes) -> None:
        if self._streaming:
            assert self._sink is not None
            self._sink(body)
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        waiter = self._waiter
        response = _Response(self._status, self._reason.decode("latin-1"), b"".join(self._body))
        self._reset()
        if not self.keep_alive:
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    # --- use ----------------------------------------------------------------------------------

    def _reset(self) -> None:
        self._waiter = None
        self._sink = None
        self._streaming = False
        self._reason = b""
        self._body = []
        self._status = 0

    def fail(self, exc: Exception) -> None:
        waiter = self._waiter
        self._reset()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def send(self, data: bytes, sink: ChunkSink | None = None) -> asyncio.Future[_Response]:
        """Write one request; a future for its answer."""
        assert self.transport is not None and self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self._sink = sink
        self.transport.write(data)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class AsyncHttp:
    """A pool of HTTP/1.1 connections to one server (`base_url`), used from one event loop."""

    def __init__(
        self,
        base_url: str,
        ssl_context: ssl.SSLContext | None,
        max_idle: int = 16,
        connect_timeout: float = 15.0,
    ) -> None:
        url = urlsplit(base_url)
        self.host = url.hostname or "localhost"
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.prefix = url.path.rstrip("/")
        self.authority = url.netloc.encode()
        self.ssl = ssl_context if url.scheme == "https" else None
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self._idle: deque[_Connection] = deque()
        self._deadlines: dict[_Connection, float] = {}
        self._watchdog: asyncio.Task[None] | None = None

    async def _connect(self) -> _Connection:
        """A new connection (TCP and TLS within `connect_timeout`: a black-holed address must
        not hang a request or a watch for the kernel's minutes of SYN retries)."""
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(
                _Connection,
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=self.host if self.ssl is not None else None,
            ),
            self.connect_timeout,
        )
        return conn

    async def _acquire(self) -> tuple[_Connection, bool]:
        """A connection, and whether it was reused (a reused one may have been closed by the
        server meanwhile: such a request is sent again once on a fresh connection)."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn, True
        return await self._connect(), False

    def _release(self, conn: _Connection) -> None:
        if conn.closed or not conn.keep_alive or len(self._idle) >= self.max_idle:
            conn.close()
        else:
            self._idle.append(conn)

    def _head(self, method: str, target: str, headers: dict[str, str], length: int) -> bytes:
        lines = [f"{method} {self.prefix}{target} HTTP/1.1\r\nHost: ".encode(), self.authority]
        text = "".join(f"\r\n{k}: {v}" for k, v in headers.items())
        if length or method not in ("GET", "DELETE"):
            text += f"\r\nContent-Length: {length}"
        lines.append(text.encode("latin-1"))
        lines.append(b"\r\n\r\n")
        return b"".join(lines)

    async def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes = b"",
        timeout: float = 30.0,
    ) -> tuple[int, str, bytes]:
        """One request (`target`: path and query); (status, reason, body)."""
        data = self._head(method, target, headers, len(body)) + body
        loop = asyncio.get_running_loop()
        if self._watchdog is None or self._watchdog.get_loop() is not loop:
            # first request (or a new event loop, e.g. one asyncio.run per test): connections
            # of another loop cannot be used here
            self._idle.clear()
            self._deadlines.clear()
            self._watchdog = loop.create_task(self._expire())
        for attempt in (0, 1):
            conn, reused = await self._acquire()
            done = conn.send(data)
            self._deadlines[conn] = loop.time() + timeout
            try:
                response = await done
            except HttpClosed:
                conn.abort()
                if reused and attempt == 0:
                    continue  # a stale keep-alive connection: once more on a new one
                raise
            except BaseException:
                conn.abort()  # timed out or cancelled mid-answer: the connection is unusable
                raise
            finally:
                self._deadlines.pop(conn, None)
            self._release(conn)
            return response.status, response.reason, response.body
        raise AssertionError("unreachable")

    async def _expire(self) -> None:
        """Fails requests past their deadline, once a second (one timer for all requests:
        a timeout context per request was 3% of the operator's CPU)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            now = loop.time()
            for conn, deadline in list(self._deadlines.items()):
                if deadline <= now:
                    self._deadlines.pop(conn, None)
                    conn.fail(TimeoutError("no answer from the API server in time"))
                    conn.abort()

    async def stream(
        self,
        target: str,
        headers: dict[str, str],
        sink: ChunkSink,
        idle_timeout: float,
    ) -> tuple[int, bytes]:
        """A GET whose body goes to `sink` chunk by chunk (a watch), on its own connection.

        Returns when the server ends the body: (status, body) — body only for a non-2xx status
        (then nothing reached the sink). Raises HttpClosed when the connection breaks, and
        TimeoutError when nothing arrived for `idle_timeout` seconds.
        """
        conn = await self._connect()
        last = [asyncio.get_running_loop().time()]

        def feed(chunk: bytes) -> None:
            last[0] = asyncio.get_running_loop().time()
            sink(chunk)

        done = conn.send(self._head("GET", target, headers, 0), feed)
        try:
            while True:
                try:
                    response = await asyncio.wait_for(asyncio.shield(done), idle_timeout)
                except TimeoutError:
                    if asyncio.get_running_loop().time() - last[0] >= idle_timeout:
                        raise
                    continue
                return response.status, response.body
        finally:
            if not done.done():
                done.cancel()  # nobody is left to read its outcome
            conn.abort()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

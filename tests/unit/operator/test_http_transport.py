"""The operator's HTTP/1.1 transport (`kubeforge._http`) against a small local server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from kubeforge._http import AsyncHttp, HttpClosed
from kubeforge.watching import _Lines

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, bytes] | None:
    head = await reader.readuntil(b"\r\n\r\n")
    if not head:
        return None
    lines = head.decode().split("\r\n")
    length = 0
    for line in lines[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    return lines[0], body


def _answer(status: int, body: bytes, close: bool = False) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _chunked(*parts: bytes) -> bytes:
    out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for p in parts:
        out += f"{len(p):x}\r\n".encode() + p + b"\r\n"
    return out + b"0\r\n\r\n"


async def _serve(handler: Handler) -> tuple[asyncio.Server, AsyncHttp, dict[str, int]]:
    stats = {"connections": 0}

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats["connections"] += 1
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, AsyncHttp(f"http://127.0.0.1:{port}", None), stats


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_requests_reuse_one_keep_alive_connection() -> None:
    seen: list[tuple[str, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (req := await _read_request(reader)) is not None:
            seen.append(req)
            writer.write(_answer(201, b'{"ok":true}'))

    async def go() -> None:
        server, http, stats = await _serve(handler)
        async with server:
            for i in range(3):
                status, _, body = await http.request("POST", f"/x?i={i}", {"A": "b"}, b"{}")
                assert (status, body) == (201, b'{"ok":true}')
            assert stats["connections"] == 1
            http.close()

    run(go())
    assert [s[0] for s in seen] == [f"POST /x?i={i} HTTP/1.1" for i in range(3)]
    assert all(s[1] == b"{}" for s in seen)


def test_error_status_and_body_come_back() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(_answer(409, b'{"reason":"AlreadyExists"}'))
        await reader.read()

    async def go() -> None:
        server, http, _ = await _serve(handler)
        async with server:
            assert await http.request("GET", "/y", {}) == (409, "X", b'{"reason":"AlreadyExists"}')
            http.close()

    run(go())


def test_a_connection_the_server_closed_is_replaced() -> None:
    """The server answers with `Connection: close`, then closes: the next request opens a new
    connection; a reused connection that breaks before answering is retried once."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(_answer(200, b"{}", close=True))

    async def go() -> None:
        server, http, stats = await _serve(handler)
        async with server:
            for _ in range(3):
                assert (await http.request("GET", "/z", {}))[0] == 200
            assert stats["connections"] == 3
            http.close()

    run(go())

    async def drops_after_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(_answer(200, b"{}"))  # keep-alive announced ...
        await writer.drain()
        await _read_request(reader)  # ... but the next request is dropped unanswered

    async def go2() -> None:
        server, http, stats = await _serve(drops_after_one)
        async with server:
            assert (await http.request("GET", "/a", {}))[0] == 200
            assert (await http.request("GET", "/b", {}))[0] == 200  # retried on a new one
            assert stats["connections"] == 2
            http.close()

    run(go2())


def test_a_fresh_connection_that_breaks_raises() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)

    async def go() -> None:
        server, http, _ = await _serve(handler)
        async with server:
            with pytest.raises(HttpClosed):
                await http.request("GET", "/c", {})
            http.close()

    run(go())


def test_a_request_without_answer_times_out() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(30)

    async def go() -> None:
        server, http, _ = await _serve(handler)
        async with server:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(TimeoutError):
                await http.request("GET", "/slow", {}, timeout=0.2)
            assert loop.time() - t0 < 3
            http.close()

    run(go())


def test_stream_feeds_chunks_as_they_come_and_lines_split_anywhere() -> None:
    events = [b'{"type":"ADDED","n":1}', b'{"type":"MODIFIED","n":2}', b'{"type":"DELETED"}']
    payload = b"\n".join(events) + b"\n"
    # split the body at awkward places: mid-line, mid-newline, one byte
    parts = [payload[:5], payload[5:24], payload[24:25], payload[25:]]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(_chunked(*parts))

    lines: list[bytes] = []

    async def go() -> tuple[int, bytes]:
        server, http, _ = await _serve(handler)
        async with server:
            result = await http.stream("/w?watch=true", {}, _Lines(lines.append).feed, 5)
            http.close()
            return result

    assert run(go()) == (200, b"")
    assert lines == events


def test_stream_error_status_returns_the_body_and_feeds_nothing() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(_answer(410, b'{"code":410}'))

    got: list[bytes] = []

    async def go() -> tuple[int, bytes]:
        server, http, _ = await _serve(handler)
        async with server:
            return await http.stream("/w", {}, got.append, 5)

    assert run(go()) == (410, b'{"code":410}')
    assert got == []


def test_stream_times_out_when_nothing_arrives() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await asyncio.sleep(30)

    async def go() -> None:
        server, http, _ = await _serve(handler)
        async with server:
            with pytest.raises(TimeoutError):
                await http.stream("/w", {}, lambda _: None, 0.2)

    run(go())


def test_a_connection_that_never_opens_times_out() -> None:
    """A TLS handshake the server never answers (as with a black-holed address) fails after
    the connect timeout instead of hanging the request."""
    import ssl

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)  # accepts TCP, never speaks TLS

    async def go() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        http = AsyncHttp(f"https://127.0.0.1:{port}", ssl.create_default_context(), connect_timeout=0.2)
        async with server:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(TimeoutError):
                await http.request("GET", "/x", {})
            with pytest.raises(TimeoutError):
                await http.stream("/w", {}, lambda _: None, 5)
            assert loop.time() - t0 < 3

    run(go())

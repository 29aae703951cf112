"""Hostile and heavy traffic against kubeforge-server, part 1: large bodies, request heads, slow,
half-closed and reset connections (part 2: test_attacks_protocol.py). Each case runs beside two
well-behaved clients (batch-1 inference every 20 ms, /v2/health/live every 50 ms, in their own process):
none of their requests may fail, liveness p99 stays <= 50 ms and inference p99 <= 250 ms on a
model whose batch-1 run takes 30-50 ms; no socket is left in CLOSE-WAIT; memory growth is
bounded and given back.

The module's server runs at the defaults except shorter timeouts (so the suite stays quick):
--header-timeout 1, --body-timeout 2, --keepalive-timeout 2.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import select
import socket
import struct
import threading
import time

import pytest

from .attack_support import (
    INFER,
    MIB,
    RssPeak,
    beside,
    binary_infer,
    close_wait_sockets,
    json_infer_body,
    padded_binary,
    raw_exchange,
    rss_bytes,
    send_big,
    status_of,
    wait_no_close_wait,
)
from .conftest import RunningServer


# -- large bodies ------------------------------------------------------------------------------------
def test_one_huge_binary_body_does_not_stall_others(sleepy: RunningServer) -> None:
    body, hl = binary_infer(rows=60 * MIB // 256)  # 60 MiB, under the 64 MiB body limit
    with beside(sleepy):
        answer = send_big(sleepy.http_port, body, hl)
    assert status_of(answer) == 400
    assert b"max-request-rows" in answer


def test_forty_20mb_bodies_bounded_memory_given_back(sleepy: RunningServer) -> None:
    body, hl = padded_binary(20 * MIB)  # must be read whole: the budget has to hold
    pid = sleepy.proc.pid

    def attack(_: int) -> bytes:
        # The attacker's own copying runs at the lowest priority: a remote attacker does not
        # spend the server's CPU, and this host has only two cores for all three processes.
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        return send_big(sleepy.http_port, body, hl)

    with beside(sleepy):
        peak = RssPeak(pid)
        with concurrent.futures.ThreadPoolExecutor(40) as pool:
            answers = list(pool.map(attack, range(40)))
        growth = peak.stop()
    codes = sorted({status_of(a) for a in answers})
    assert set(codes) <= {400, 408, 503}, codes  # 408: a starved sender missed the body timeout
    for a in answers:
        if status_of(a) == 503:
            assert b"retry-after: 1" in a.lower()
    assert growth <= 512 * MIB, f"RSS grew {growth / MIB:.0f} MiB"
    deadline = time.monotonic() + 5
    while rss_bytes(pid) - peak.base > 96 * MIB and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rss_bytes(pid) - peak.base <= 96 * MIB, "memory not given back"


def test_big_json_body_is_413_naming_the_binary_extension(sleepy: RunningServer) -> None:
    with beside(sleepy):
        t = time.perf_counter()
        answer = send_big(sleepy.http_port, b"[" + b"0.5," * (3 * MIB) + b"0]", None)
        took = time.perf_counter() - t
    assert status_of(answer) == 413 and b"binary tensor extension" in answer
    assert took < 1.0


def test_declared_10gb_body_is_413_at_once(sleepy: RunningServer) -> None:
    with beside(sleepy):
        t = time.perf_counter()
        answer = raw_exchange(
            sleepy.http_port,
            b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (INFER, 10 * 1024**3),
        )
    assert status_of(answer) == 413 and time.perf_counter() - t < 2.5


# -- request heads ----------------------------------------------------------------------------------
def test_huge_header_value_is_431_and_bounded(sleepy: RunningServer) -> None:
    with beside(sleepy):
        peak = RssPeak(sleepy.proc.pid)
        with socket.create_connection(("127.0.0.1", sleepy.http_port), timeout=10) as s:
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
            sent = 0
            answer = b""
            while sent < 64 * MIB:
                readable, _, _ = select.select([s], [], [], 0)
                if readable:
                    answer = s.recv(65536)
                    break
                try:
                    s.sendall(b"a" * 65536)
                except OSError:
                    break
                sent += 65536
            if not answer:
                answer = s.recv(65536)
        growth = peak.stop()
    assert status_of(answer) == 431 and b"max-header-bytes" in answer
    assert sent < 8 * MIB, f"server read {sent} header bytes before refusing"
    assert growth < 64 * MIB


def test_ten_thousand_headers_and_100kb_request_line_are_431(sleepy: RunningServer) -> None:
    with beside(sleepy):
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
        a = raw_exchange(sleepy.http_port, b"GET /v2/health/live HTTP/1.1\r\n" + many + b"\r\n")
        b = raw_exchange(sleepy.http_port, b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n")
    assert status_of(a) == 431 and status_of(b) == 431


def test_slowloris_heads_and_bodies_get_408_and_close(sleepy: RunningServer) -> None:
    socks: list[socket.socket] = []
    with beside(sleepy):
        for i in range(300):
            s = socket.create_connection(("127.0.0.1", sleepy.http_port), timeout=10)
            if i % 2:
                s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            else:
                s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{" % INFER)
            socks.append(s)
        answers = []
        for s in socks:
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except OSError:
                pass
            answers.append(data)
            s.close()
    assert all(status_of(a) == 408 for a in answers), {a[:40] for a in answers}


def test_silent_connections_close_after_the_header_timeout(sleepy: RunningServer) -> None:
    with beside(sleepy):
        socks = [socket.create_connection(("127.0.0.1", sleepy.http_port)) for _ in range(100)]
        t = time.perf_counter()
        for s in socks:
            s.settimeout(5)
            assert s.recv(10) == b""  # closed by the server, no request ever sent
            s.close()
    assert time.perf_counter() - t < 4


def test_idle_keepalive_connection_is_closed(sleepy: RunningServer) -> None:
    with beside(sleepy):
        conn = http.client.HTTPConnection("127.0.0.1", sleepy.http_port, timeout=10)
        conn.request("GET", "/v2/health/live")
        assert conn.getresponse().read() == b'{"live":true}'
        assert conn.sock is not None
        t = time.perf_counter()
        assert conn.sock.recv(10) == b""
        assert 1.5 < time.perf_counter() - t < 4
        conn.close()


# -- half-closed and reset connections ----------------------------------------------------------------
@pytest.mark.parametrize("how", ["half-close", "reset"])
def test_abandoned_partial_requests_leave_no_close_wait(sleepy: RunningServer, how: str) -> None:
    with beside(sleepy):
        socks = []
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", sleepy.http_port))
            s.sendall(b'POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{"in' % INFER)
            socks.append(s)
        time.sleep(0.2)
        for s in socks:
            if how == "half-close":
                s.shutdown(socket.SHUT_WR)
            else:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
        assert wait_no_close_wait(sleepy.http_port, within=0.5) == 0
        if how == "half-close":
            for s in socks:
                s.settimeout(2)
                assert s.recv(10) == b""  # closed at once, not after a timeout
                s.close()


def test_half_close_after_a_complete_request_still_gets_the_answer(sleepy: RunningServer) -> None:
    body = json_infer_body()
    with beside(sleepy), socket.create_connection(("127.0.0.1", sleepy.http_port), 10) as s:
        s.sendall(
            b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (INFER, len(body), body)
        )
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert status_of(data) == 200 and b'"outputs"' in data
    assert close_wait_sockets(sleepy.http_port) == 0

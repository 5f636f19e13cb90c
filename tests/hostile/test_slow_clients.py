"""Slow clients (issue 13, item 14): the tool server's threads are not for holding.

The faults: a client sending one byte every 20 s kept a connection (and its thread) open past
100 s, since the 30 s timeout applied to each read, not to the request; 500 idle connections
made 247 threads.  Now a request (line, headers, body) must arrive within
``--request-timeout`` seconds in total, and past ``--max-connections`` open connections a
new one gets a 503 and is closed, so the thread count stays bounded.  The deadline is 1.5 s
here, so every test ends within seconds.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.hostile._real_servers import ToolProcess, start_tool_server

DEADLINE = 1.5
CAP = 8
CALL = b'{"tool": "calculator", "args": {"expression": "1+1"}, "id": "slow"}'


@pytest.fixture
def tools(tmp_path: Path) -> Iterator[ToolProcess]:
    server = start_tool_server(tmp_path, "--request-timeout", str(DEADLINE),
                               "--max-connections", str(CAP))
    yield server
    assert server.stop() == 0


def trickle(sock: socket.socket, data: bytes, every: float,
            limit: float) -> tuple[float, bytes]:
    """Send ``data`` one byte every ``every`` seconds until the server closes the connection
    or ``limit`` seconds pass; (seconds the connection lived, what the server sent)."""
    started = time.monotonic()
    received = b""
    sock.settimeout(every)
    for byte in data:
        if time.monotonic() - started > limit:
            break
        try:
            sock.sendall(bytes([byte]))
            chunk = sock.recv(4096)
        except TimeoutError:
            continue  # nothing from the server yet: keep trickling
        except OSError:
            break  # reset: closed
        if not chunk:
            break  # closed
        received += chunk
    return time.monotonic() - started, received


def test_a_trickled_request_line_and_headers_are_cut_at_the_deadline(
        tools: ToolProcess) -> None:
    port = tools.endpoint.port
    head = (b"POST /call HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"X-Padding: " + b"a" * 200 + b"\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        lived, _ = trickle(sock, head, every=0.25, limit=10 * DEADLINE)
    assert lived < DEADLINE + 1.5, f"the connection lived {lived:.1f}s"
    # the server stayed responsive meanwhile
    assert tools.endpoint.request("GET", "/health").json()["status"] == "ok"


def test_a_trickled_body_is_cut_and_never_executed(tools: ToolProcess) -> None:
    port = tools.endpoint.port
    head = (b"POST /call HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(CALL)).encode() + b"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        lived, received = trickle(sock, CALL, every=0.25, limit=10 * DEADLINE)
    assert lived < DEADLINE + 1.5, f"the connection lived {lived:.1f}s"
    assert b'"result"' not in received  # half a body never reaches a tool


def test_the_body_of_a_refused_request_is_not_waited_for(tools: ToolProcess) -> None:
    """A 415 discards what comes of the body (so the client sees the answer, not a reset),
    for two seconds at most: a trickle cannot hold the thread there either."""
    head = (b"POST /call HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 100000\r\n\r\n")
    with socket.create_connection(("127.0.0.1", tools.endpoint.port), timeout=5) as sock:
        sock.sendall(head)
        lived, received = trickle(sock, b"x" * 1000, every=0.2, limit=15)
    assert b" 415 " in received.split(b"\r\n", 1)[0]
    assert lived < 2.0 + 1.5, f"the connection lived {lived:.1f}s"


def test_a_silent_connection_is_closed_at_the_deadline(tools: ToolProcess) -> None:
    with socket.create_connection(("127.0.0.1", tools.endpoint.port), timeout=10) as sock:
        started = time.monotonic()
        with contextlib.suppress(OSError):
            assert sock.recv(100) == b""  # closed by the server, nothing sent
        assert time.monotonic() - started < DEADLINE + 1.5


def test_idle_connections_cannot_grow_the_thread_count(tools: ToolProcess) -> None:
    server = psutil.Process(tools.endpoint.pid)
    baseline = server.num_threads()
    sockets = []
    try:
        for _ in range(60):  # bounded: 60 sockets, held under DEADLINE seconds
            sockets.append(socket.create_connection(("127.0.0.1", tools.endpoint.port),
                                                    timeout=5))
        time.sleep(0.3)
        threads = server.num_threads()
        assert threads <= baseline + CAP + 1, (baseline, threads)
        # the connections past the cap were answered 503 and closed
        refused = 0
        for sock in sockets[CAP + 2:]:
            sock.settimeout(2)
            reply = b""
            with contextlib.suppress(OSError):
                while chunk := sock.recv(4096):
                    reply += chunk
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503"), reply[:200]
            assert json.loads(body)["error"]["code"] == "too_many_connections"
            refused += 1
        assert refused == 60 - CAP - 2
    finally:
        for sock in sockets:
            sock.close()
    # the held ones end at the deadline; then the server serves again, threads back down
    time.sleep(DEADLINE + 0.5)
    health = tools.endpoint.request("GET", "/health").json()
    assert health["status"] == "ok" and health["max_connections"] == CAP
    assert server.num_threads() <= baseline + 1
    answer = tools.endpoint.request("POST", "/call", content=CALL,
                                    headers={"Content-Type": "application/json"})
    assert answer.json()["result"] == 2

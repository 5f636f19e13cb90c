"""The tool server's HTTP layer (stdlib ``ThreadingHTTPServer``): routes, the checks every
request passes (loopback Host, same-site Origin, API key, JSON bodies of bounded size), one
deadline per whole request, and a bounded number of open connections.  The endpoints and
the hostile-client rules are described in :mod:`owllm.tools.server`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from owllm._version import __version__
from owllm.inenv.asgi_guard import (
    ALLOWED_HOSTS_VAR,
    bearer_ok,
    host_allowed,
    is_json_type,
    origin_allowed,
)
from owllm.tools.calls import ToolRunner, error_reply, execute
from owllm.tools.registry import ToolRegistry

MAX_BODY = 1 << 20
MAX_CONNECTIONS = 64  # > MAX_INFLIGHT: /health still gets in while every call slot is busy
REQUEST_TIMEOUT = 30.0  # seconds for a whole request (line, headers, body) to arrive
DRAIN_LIMIT = 8 * MAX_BODY  # past this, a 413 closes without reading the rest
DRAIN_SECONDS = 2.0  # at most this long discarding the body of a refused request
OPEN_PATHS = frozenset({"/health"})  # answered without the API key
log = logging.getLogger("owllm.tools.server")  # one logger for the whole server's output


class _Handler(BaseHTTPRequestHandler):
    server: ToolHTTPServer
    server_version = f"owllm-tools/{__version__}"

    def setup(self) -> None:
        super().setup()
        # Per socket operation (a client that stops reading our answer); the whole request
        # has the deadline of handle_one_request.
        self.connection.settimeout(self.server.request_timeout)

    def handle_one_request(self) -> None:
        # The whole request must arrive by this deadline (issue 13: one byte every 20 s kept
        # a connection open past 100 s, each byte resetting the per-read timeout).  Waiting
        # for the next request on a keep-alive connection counts too.
        self.server.deadlines.arm(self.connection, self.server.request_timeout)
        try:
            super().handle_one_request()
        except OSError:  # cut at its deadline, or the client went away
            self.close_connection = True
        finally:
            self.server.deadlines.disarm(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """The stdlib's own errors (bad request line, headers too long, unknown method) in
        our JSON shape instead of its HTML page."""
        self.close_connection = True
        names = {400: "bad_request", 408: "request_timeout", 414: "uri_too_long",
                 431: "headers_too_large", 501: "method_not_allowed"}
        status = 405 if code == 501 else code  # 501 "unsupported method": say 405 like routes
        text = message or self.responses.get(code, ("error",))[0]
        with contextlib.suppress(OSError):
            self._send(*error_reply(status, names.get(code, "bad_request"), text), close=True)

    def _send(self, status: int, body: dict[str, Any], close: bool = False) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        if close:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _refused(self) -> tuple[int, dict[str, Any]] | None:
        """Why a request must not reach the routes (403/401), or None."""
        server = self.server
        host = self.headers.get("Host")
        if not host_allowed(host, server.allowed_hosts):
            return error_reply(403, "forbidden_host", f"Host {(host or '(none)')[:100]!r} is not "
                          "allowed: this server answers only loopback names (127.0.0.1, "
                          f"localhost, [::1]) and those listed in {ALLOWED_HOSTS_VAR}")
        origin = self.headers.get("Origin")
        if not origin_allowed(origin, server.allowed_hosts):
            return error_reply(403, "cross_origin", f"cross-site request from Origin "
                          f"{origin[:100]!r} refused" if origin else "cross-site request")
        path = self.path.split("?", 1)[0]
        if server.api_key and path not in OPEN_PATHS and \
                not bearer_ok(self.headers.get("Authorization"), server.api_key):
            return error_reply(401, "unauthorized", "missing or wrong API key: send "
                          "'Authorization: Bearer <key>'")
        return None

    def _route(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        routes = {"/health": "GET", "/tools": "GET", "/call": "POST"}
        refused = self._refused()
        # Nothing more to read but for a POST /call (a refused request's body is drained by
        # _reject): the answer has no deadline, and the reaper must not cut it.
        reading = refused is None and method == "POST" and path == "/call"
        if not reading and not self.server.deadlines.disarm(self.connection):
            self.close_connection = True
            return
        if refused is not None:
            self._reject(*refused)
        elif path not in routes:  # _reject: a body sent along must not poison the connection
            self._reject(*error_reply(404, "not_found", f"no route {path}", path))
        elif routes[path] != method:
            self._reject(*error_reply(405, "method_not_allowed", f"{path} takes {routes[path]}",
                                 path))
        elif path == "/health":
            self._send(200, self.server.health())
        elif path == "/tools":
            self._send(200, {"tools": self.server.registry.specs()})
        else:
            self._call()

    def _reject(self, status: int, body: dict[str, Any]) -> None:
        """Answer without reading the body, then discard a moderate one (see _drain)."""
        self._send(status, body, close=True)
        length = self.headers.get("Content-Length", "")
        if length.isdigit():
            self._drain(int(length))

    def _call(self) -> None:
        if not is_json_type(self.headers.get("Content-Type")):
            self.server.deadlines.disarm(self.connection)
            self._reject(*error_reply(415, "unsupported_media_type", "POST /call takes "
                                 "'Content-Type: application/json'"))
            return
        length_header = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length_header is None:
            self.server.deadlines.disarm(self.connection)
            self._send(*error_reply(411, "length_required", "send a Content-Length body"),
                       close=True)
            return
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError(length_header)
        except ValueError:
            self.server.deadlines.disarm(self.connection)
            self._send(*error_reply(400, "bad_request", "Content-Length is not a number"),
                       close=True)
            return
        limit = self.server.max_body
        if length > limit:
            self.server.deadlines.disarm(self.connection)
            self._reject(*error_reply(413, "too_large", f"body of {length} bytes is over {limit}"))
            return
        body = self.rfile.read(length)
        # Cut at its deadline (or the client left) while sending: never run a tool on half
        # a body, and answer nothing on a socket the reaper has shut.
        if not self.server.deadlines.disarm(self.connection) or len(body) < length:
            self.close_connection = True
            return
        self._send(*execute(self.server.registry, self.server.runner, body))

    def _drain(self, length: int) -> None:
        # Closing with unread data makes the kernel send RST, and the client may never see our
        # error: discard a moderately large body (never stored), give up on huge ones.
        if length > DRAIN_LIMIT:
            return
        deadline = time.monotonic() + DRAIN_SECONDS  # in total: a trickle cannot hold us
        try:
            while length > 0 and (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                chunk = self.rfile.read1(min(length, 65536))
                if not chunk:
                    break
                length -= len(chunk)
        except OSError:
            pass

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")


class _Deadlines:
    """When each connection's pending request must have fully arrived.  A reaper thread
    shuts the sockets that miss it; the blocked read in the handler then ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due: dict[socket.socket, float] = {}

    def arm(self, sock: socket.socket, seconds: float) -> None:
        with self._lock:
            self._due[sock] = time.monotonic() + seconds

    def disarm(self, sock: socket.socket) -> bool:
        """False when the reaper has already cut this connection (or it was not armed)."""
        with self._lock:
            return self._due.pop(sock, None) is not None

    def expired(self) -> list[socket.socket]:
        now = time.monotonic()
        with self._lock:
            late = [sock for sock, due in self._due.items() if due <= now]
            for sock in late:
                del self._due[sock]
        return late

    def __len__(self) -> int:
        with self._lock:
            return len(self._due)


class ToolHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # never wait for a request thread stuck on a hung tool
    request_queue_size = 64  # a burst of connections waits in the backlog, not refused

    def __init__(self, address: tuple[str, int], registry: ToolRegistry, runner: ToolRunner,
                 max_body: int, *, request_timeout: float = REQUEST_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS, api_key: str | None = None,
                 allowed_hosts: frozenset[str] = frozenset()) -> None:
        super().__init__(address, _Handler)
        self.registry = registry
        self.runner = runner
        self.max_body = max_body
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.api_key = api_key or None
        self.allowed_hosts = allowed_hosts
        self.started = time.time()
        self.deadlines = _Deadlines()
        # One thread per connection, at most max_connections of them (issue 13: 500 idle
        # connections made 247 threads).
        self._slots = threading.BoundedSemaphore(max_connections)
        self._open = 0
        self._open_lock = threading.Lock()
        self._closing = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="tool-server-reaper",
                                        daemon=True)
        self._reaper.start()

    @property
    def connections(self) -> int:
        """Connections being served now."""
        return self._open

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        with self._open_lock:
            self._open += 1
        try:
            super().process_request(request, client_address)  # starts the thread
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._open_lock:
            self._open -= 1
        self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        """503 and close, from the accept loop: never blocks (MSG_DONTWAIT)."""
        status, body = error_reply(503, "too_many_connections",
                              f"{self.max_connections} connections already open; retry later")
        data = json.dumps(body).encode("utf-8")
        head = (f"HTTP/1.1 {status} Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
        nowait = getattr(socket, "MSG_DONTWAIT", 0)
        try:
            request.send(head.encode("ascii") + data, nowait)
            request.recv(65536, nowait)  # what already came: closing on it would send RST
        except OSError:
            pass
        self.shutdown_request(request)
        log.warning("refused a connection: %d already open", self.max_connections)

    def _reap(self) -> None:
        interval = min(0.25, max(0.02, self.request_timeout / 10))
        while not self._closing.wait(interval):
            for sock in self.deadlines.expired():
                log.info("closing a connection: no complete request within %gs",
                         self.request_timeout)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that vanished mid-answer is routine; anything else is logged, never sent.
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.info("connection from %s ended: %r", client_address, exc)
        else:
            log.error("error while serving %s:\n%s", client_address, traceback.format_exc())

    def server_close(self) -> None:
        closing = getattr(self, "_closing", None)  # None: the bind in __init__ failed
        if closing is not None:
            closing.set()
        super().server_close()

    def health(self) -> dict[str, Any]:
        saturated = self.runner.inflight >= self.runner.max_inflight
        return {"status": "saturated" if saturated else "ok", "saturated": saturated,
                "pid": os.getpid(), "version": __version__,
                "tools": self.registry.names(), "inflight": self.runner.inflight,
                "max_inflight": self.runner.max_inflight, "connections": self.connections,
                "max_connections": self.max_connections,
                "uptime_s": round(time.time() - self.started, 3)}

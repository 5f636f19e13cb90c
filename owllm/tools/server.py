"""The tool server: a small stdlib HTTP server that validates and executes tool calls.

Endpoints (JSON in and out)::

    GET  /health  200 {"status": "ok" | "saturated", "saturated", "pid", "tools": [names],
                       "inflight", "max_inflight", "connections", "max_connections", "version"}
    GET  /tools   200 {"tools": [OpenAI-style specs]}
    POST /call    {"tool", "args", "id"} → 200 {"id", "tool", "result"}
                  or {"error": {"code", "message", "path"}, "id"?} with
                  400 bad call · 401 no or wrong API key · 403 non-loopback Host or
                  cross-site Origin · 404 unknown route · 405 wrong method ·
                  411 no Content-Length · 413 body too large · 415 not application/json ·
                  422 args rejected by the schema or by the tool ·
                  500 tool crashed / result not JSON · 503 too many calls in flight ·
                  504 the tool missed its deadline

``/health`` says ``"status": "saturated"`` (still HTTP 200: the process is alive and answers,
so a supervisor must not kill it) while every call slot is taken and calls get 503; it says
``"ok"`` again once a slot frees.

Hostile clients (issue 13).  Only loopback ``Host`` headers are answered (127.0.0.1,
localhost, [::1]; ``OWLLM_ALLOWED_HOSTS`` adds names, e.g. when ``--host`` is not loopback,
which is warned about on stderr), a cross-site ``Origin`` is refused, ``POST`` takes only
``application/json``: a web page can neither drive the server with a "simple" request nor
read it through DNS rebinding.  With ``OWLLM_API_KEY`` in its environment every route but
``/health`` needs ``Authorization: Bearer <key>``.  A request (line, headers, body) must
arrive within ``--request-timeout`` seconds in total, idle keep-alive connections included;
past ``--max-connections`` open connections a new one gets a 503 and is closed, so a flood
of idle sockets cannot grow the thread count.  Responses never carry an exception text.

Run it as a process (what ``owllm tools serve`` launches)::

    python -m owllm.tools.server --host 127.0.0.1 --port 0 [--config PATH]
                                 [--tools-config FILE] [--call-timeout S]
                                 [--ready-file PATH] [--max-body BYTES]
                                 [--request-timeout S] [--max-connections N]

``--config`` is an OWLLM config (``llm_backends.yaml``): its ``tools:`` entries are served and
its ``tool_server.call_timeout_s`` is the default deadline.  ``--tools-config`` is a standalone
tools file (see :func:`owllm.tools.registry.load_tools_config`).

Once listening it writes ``{"url", "host", "port", "pid"}`` to ``--ready-file`` atomically
(tmp + ``os.replace``), so a parent that passed ``--port 0`` learns the real port.  SIGTERM or
SIGINT stops it cleanly (exit 0) and removes the ready file.

Stdlib only (``ThreadingHTTPServer``) so the orchestrator stays light.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from owllm import __version__
from owllm.config import Config, load_config
from owllm.errors import OwllmError, UsageError
from owllm.inenv.asgi_guard import (
    ALLOWED_HOSTS_VAR,
    API_KEY_VAR,
    bearer_ok,
    bind_warning,
    host_allowed,
    is_json_type,
    origin_allowed,
    parse_allowed_hosts,
)
from owllm.tools.errors import ARGS_CODES, ToolCallError, ToolError, ToolTimeout
from owllm.tools.parser import ToolCall, parse_tool_call
from owllm.tools.registry import Tool, ToolRegistry, dumps_result, tools_from_config

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8763
DEFAULT_TIMEOUT = 10.0
MAX_BODY = 1 << 20
MAX_INFLIGHT = 32
MAX_CONNECTIONS = 64  # > MAX_INFLIGHT: /health still gets in while every call slot is busy
REQUEST_TIMEOUT = 30.0  # seconds for a whole request (line, headers, body) to arrive
DRAIN_LIMIT = 8 * MAX_BODY  # past this, a 413 closes without reading the rest
DRAIN_SECONDS = 2.0  # at most this long discarding the body of a refused request
OPEN_PATHS = frozenset({"/health"})  # answered without the API key
log = logging.getLogger("owllm.tools.server")


class ToolRunner:
    """Runs tools with a deadline.

    Each call runs in its own daemon thread and the caller waits at most ``timeout``.  Python
    cannot kill a thread, so a hung tool's thread leaks: it keeps its slot of
    ``max_inflight`` until it returns, which bounds the leak (past it, calls get 503 while
    ``/health`` keeps answering).  Daemon threads (not a ThreadPoolExecutor, whose workers are
    joined at exit) let the process still exit on SIGTERM.  Tools that must be killable
    should do their own work in a subprocess.
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, max_inflight: int = MAX_INFLIGHT) -> None:
        self.timeout = timeout
        self.max_inflight = max_inflight
        self._slots = threading.BoundedSemaphore(max_inflight)
        self._lock = threading.Lock()
        self.inflight = 0

    def run(self, item: Tool, args: dict[str, Any]) -> Any:
        """The tool's result; raises ToolTimeout, or whatever the tool raised."""
        if not self._slots.acquire(blocking=False):
            raise _Busy
        box: dict[str, Any] = {}
        done = threading.Event()

        def target() -> None:
            try:
                box["result"] = item.func(**args)
            except BaseException as exc:
                box["error"] = exc
            finally:
                with self._lock:
                    self.inflight -= 1
                self._slots.release()
                done.set()

        with self._lock:
            self.inflight += 1
        threading.Thread(target=target, name=f"tool-{item.name}", daemon=True).start()
        timeout = item.timeout or self.timeout
        if not done.wait(timeout):
            raise ToolTimeout(item.name, timeout)
        if "error" in box:
            raise box["error"]
        return box["result"]


class _Busy(Exception):
    pass


def _error(status: int, code: str, message: str, path: str = "$",
           call_id: str | None = None) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"error": {"code": code, "message": message, "path": path}}
    if call_id is not None:
        body["id"] = call_id
    return status, body


def execute(registry: ToolRegistry, runner: ToolRunner, body: bytes) -> tuple[int, dict[str, Any]]:
    """Validate and run one call from a request body → (HTTP status, JSON body)."""
    try:
        parsed = parse_tool_call(body, registry)
    except ToolCallError as exc:
        status = 413 if exc.code == "too_large" else 422 if exc.code in ARGS_CODES else 400
        return status, {"error": exc.to_dict()}
    if isinstance(parsed, list):
        return _error(400, "not_an_object", "POST /call takes one call; send parallel calls "
                      "as separate requests")
    call: ToolCall = parsed
    item = registry.get(call.tool)
    if item is None:  # unregistered between validation and now
        return _error(400, "unknown_tool", f"unknown tool {call.tool!r}", "$.tool", call.id)
    try:
        value = runner.run(item, call.args)
    except ToolError as exc:
        return _error(422, exc.code, exc.message, "$.args", call.id)
    except ToolTimeout as exc:
        return _error(504, "timeout", exc.message, "$", call.id)
    except _Busy:
        return _error(503, "busy", f"{runner.max_inflight} calls already in flight", "$",
                      call.id)
    except BaseException as exc:
        return _crash(call, exc)
    try:
        encoded = dumps_result(value)
    except (TypeError, ValueError, RecursionError) as exc:
        log.error("tool %s returned a result that is not JSON: %r", call.tool, exc)
        return _error(500, "bad_result", f"the result of tool {call.tool!r} is not JSON "
                      "(the server log has the details)", "$", call.id)
    return 200, {"id": call.id, "tool": call.tool, "result": json.loads(encoded)}


def _crash(call: ToolCall, exc: BaseException) -> tuple[int, dict[str, Any]]:
    log.error("tool %s crashed:\n%s", call.tool,
              "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    # The exception text stays in the log: it can hold paths, secrets, internals.
    return _error(500, "tool_crashed", f"tool {call.tool!r} crashed ({type(exc).__name__}); "
                  "the server log has the details", "$", call.id)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
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
            self._send(*_error(status, names.get(code, "bad_request"), text), close=True)

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
            return _error(403, "forbidden_host", f"Host {(host or '(none)')[:100]!r} is not "
                          "allowed: this server answers only loopback names (127.0.0.1, "
                          f"localhost, [::1]) and those listed in {ALLOWED_HOSTS_VAR}")
        origin = self.headers.get("Origin")
        if not origin_allowed(origin, server.allowed_hosts):
            return _error(403, "cross_origin", f"cross-site request from Origin "
                          f"{origin[:100]!r} refused" if origin else "cross-site request")
        path = self.path.split("?", 1)[0]
        if server.api_key and path not in OPEN_PATHS and \
                not bearer_ok(self.headers.get("Authorization"), server.api_key):
            return _error(401, "unauthorized", "missing or wrong API key: send "
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
            self._reject(*_error(404, "not_found", f"no route {path}", path))
        elif routes[path] != method:
            self._reject(*_error(405, "method_not_allowed", f"{path} takes {routes[path]}",
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
            self._reject(*_error(415, "unsupported_media_type", "POST /call takes "
                                 "'Content-Type: application/json'"))
            return
        length_header = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length_header is None:
            self.server.deadlines.disarm(self.connection)
            self._send(*_error(411, "length_required", "send a Content-Length body"),
                       close=True)
            return
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError(length_header)
        except ValueError:
            self.server.deadlines.disarm(self.connection)
            self._send(*_error(400, "bad_request", "Content-Length is not a number"),
                       close=True)
            return
        limit = self.server.max_body
        if length > limit:
            self.server.deadlines.disarm(self.connection)
            self._reject(*_error(413, "too_large", f"body of {length} bytes is over {limit}"))
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


class _Server(ThreadingHTTPServer):
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
        status, body = _error(503, "too_many_connections",
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


class ToolServer:
    """An in-process tool server (``with ToolServer(registry, port=0) as s: s.url``).

    ``api_key``: require ``Authorization: Bearer <key>`` on every route but ``/health``;
    ``allowed_hosts``: Host/Origin names accepted besides loopback (``"*"``: any).
    """

    def __init__(self, registry: ToolRegistry | None = None, host: str = DEFAULT_HOST,
                 port: int = DEFAULT_PORT, *, timeout: float = DEFAULT_TIMEOUT,
                 max_body: int = MAX_BODY, max_inflight: int = MAX_INFLIGHT,
                 request_timeout: float = REQUEST_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS, api_key: str | None = None,
                 allowed_hosts: str | Sequence[str] | None = None) -> None:
        self.registry = registry if registry is not None else ToolRegistry(builtins=True)
        allowed = parse_allowed_hosts(allowed_hosts)
        warning = bind_warning(host, allowed)
        if warning:  # loud: printed whatever the logging setup
            print(f"owllm tool server: {warning}", file=sys.stderr, flush=True)
        self.httpd = _Server((host, port), self.registry, ToolRunner(timeout, max_inflight),
                             max_body, request_timeout=request_timeout,
                             max_connections=max_connections, api_key=api_key,
                             allowed_hosts=allowed)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        """The bound address."""
        return str(self.httpd.server_address[0])

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0)."""
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> ToolServer:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="tool-server",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(5)
        self.httpd.server_close()

    def __enter__(self) -> ToolServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_ready_file(path: str | Path, info: dict[str, Any]) -> None:
    """Write JSON atomically: a temp file in the same folder, then ``os.replace``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info), encoding="utf-8")
    os.replace(tmp, target)


def build_registry(tools_config: str | None, entry_points: bool = True,
                   config: Config | None = None) -> ToolRegistry:
    """Built-ins, then entry-point tools, then the OWLLM config's ``tools:`` entries, then
    the tools file's (later ones win)."""
    registry = ToolRegistry(builtins=True)
    if entry_points:
        registry.load_entry_points()
    if config is not None:
        for item in tools_from_config(config):
            registry.register(item, replace=True)
    if tools_config:
        registry.load_config(tools_config)
    return registry


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m owllm.tools.server``: serve until SIGTERM/SIGINT; 0 on a clean stop,
    2 on a bad config or an address that cannot be bound."""
    parser = argparse.ArgumentParser(prog="python -m owllm.tools.server",
                                     description="OWLLM tool server")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 = a free port")
    parser.add_argument("--config", metavar="PATH",
                        help="OWLLM config (llm_backends.yaml): serve its tools: entries; its "
                             "tool_server.call_timeout_s is the default deadline")
    parser.add_argument("--tools-config", metavar="FILE", help="YAML/JSON file of user tools")
    parser.add_argument("--ready-file", metavar="PATH",
                        help='write {"url","host","port","pid"} here once listening')
    parser.add_argument("--call-timeout", "--timeout", dest="timeout", type=float,
                        default=None, metavar="S",
                        help="per-call deadline in seconds (a tool's own timeout wins; "
                             f"default: the config's, else {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--max-body", type=int, default=MAX_BODY, help="bytes")
    parser.add_argument("--request-timeout", type=float, default=REQUEST_TIMEOUT, metavar="S",
                        help="seconds for a whole request (line, headers, body) to arrive; "
                             "idle keep-alive connections are closed after it too "
                             f"(default {REQUEST_TIMEOUT:g})")
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS, metavar="N",
                        help="open connections served at once; more get a 503 "
                             f"(default {MAX_CONNECTIONS})")
    parser.add_argument("--no-entry-points", action="store_true",
                        help=f"do not load tools from the {'owllm.tools'!r} entry points")
    parser.add_argument("--quiet", action="store_true", help="no request log on stderr")
    parser.epilog = (f"Environment: {API_KEY_VAR} requires 'Authorization: Bearer <key>' on "
                     f"every route but /health; {ALLOWED_HOSTS_VAR} (comma-separated) adds "
                     "Host/Origin names besides loopback.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        config = load_config(args.config) if args.config else None
        timeout = args.timeout if args.timeout is not None else (
            config.tool_server.call_timeout_s if config is not None else DEFAULT_TIMEOUT)
        if not timeout > 0:
            raise UsageError(f"--call-timeout must be > 0, got {timeout:g}")
        if not args.request_timeout > 0 or args.max_connections < 1:
            raise UsageError("--request-timeout must be > 0 and --max-connections >= 1")
        registry = build_registry(args.tools_config, not args.no_entry_points, config)
        # The key and the allow-list come from the environment (never the command line,
        # which any local user can read in ps).
        server = ToolServer(registry, args.host, args.port, timeout=timeout,
                            max_body=args.max_body, request_timeout=args.request_timeout,
                            max_connections=args.max_connections,
                            api_key=os.environ.get(API_KEY_VAR) or None,
                            allowed_hosts=os.environ.get(ALLOWED_HOSTS_VAR))
    except OwllmError as exc:
        print(f"owllm tool server: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"owllm tool server: cannot listen on {args.host}:{args.port}: {exc}",
              file=sys.stderr)
        return 2
    server.start()
    info = {"url": server.url, "host": server.host, "port": server.port, "pid": os.getpid()}
    if args.ready_file:
        write_ready_file(args.ready_file, info)
    log.warning("tool server listening on %s (tools: %s)", server.url,
                ", ".join(registry.names()))
    while not stop.wait(1.0):
        pass
    server.stop()
    if args.ready_file:
        Path(args.ready_file).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

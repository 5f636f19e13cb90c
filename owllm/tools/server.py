"""The tool server: a small stdlib HTTP server that validates and executes tool calls.

Endpoints (JSON in and out)::

    GET  /health  200 {"status": "ok", "pid", "tools": [names], "inflight", "version"}
    GET  /tools   200 {"tools": [OpenAI-style specs]}
    POST /call    {"tool", "args", "id"} → 200 {"id", "tool", "result"}
                  or {"error": {"code", "message", "path"}, "id"?} with
                  400 bad call · 404 unknown route · 405 wrong method · 411 no Content-Length ·
                  413 body too large · 422 args rejected by the schema or by the tool ·
                  500 tool crashed / result not JSON · 503 too many calls in flight ·
                  504 the tool missed its deadline

Run it as a process (what ``owllm tools serve`` launches)::

    python -m owllm.tools.server --host 127.0.0.1 --port 0 [--config PATH]
                                 [--tools-config FILE] [--call-timeout S]
                                 [--ready-file PATH] [--max-body BYTES]

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
import json
import logging
import os
import signal
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
from owllm.tools.errors import ARGS_CODES, ToolCallError, ToolError, ToolTimeout
from owllm.tools.parser import ToolCall, parse_tool_call
from owllm.tools.registry import Tool, ToolRegistry, dumps_result, tools_from_config

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8763
DEFAULT_TIMEOUT = 10.0
MAX_BODY = 1 << 20
MAX_INFLIGHT = 32
DRAIN_LIMIT = 8 * MAX_BODY  # past this, a 413 closes without reading the rest
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
        return _error(500, "bad_result", f"tool result is not JSON: {exc}", "$", call.id)
    return 200, {"id": call.id, "tool": call.tool, "result": json.loads(encoded)}


def _crash(call: ToolCall, exc: BaseException) -> tuple[int, dict[str, Any]]:
    log.error("tool %s crashed:\n%s", call.tool,
              "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return _error(500, "tool_crashed", f"{type(exc).__name__}: {str(exc)[:300]}", "$", call.id)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 30  # a slow or silent client cannot hold a thread forever
    server_version = f"owllm-tools/{__version__}"

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: dict[str, Any], close: bool = False) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        routes = {"/health": "GET", "/tools": "GET", "/call": "POST"}
        if path not in routes:
            self._send(*_error(404, "not_found", f"no route {path}", path))
        elif routes[path] != method:
            self._send(*_error(405, "method_not_allowed", f"{path} takes {routes[path]}", path))
        elif path == "/health":
            self._send(200, self.server.health())
        elif path == "/tools":
            self._send(200, {"tools": self.server.registry.specs()})
        else:
            self._call()

    def _call(self) -> None:
        length_header = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length_header is None:
            self._send(*_error(411, "length_required", "send a Content-Length body"),
                       close=True)
            return
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError(length_header)
        except ValueError:
            self._send(*_error(400, "bad_request", "Content-Length is not a number"),
                       close=True)
            return
        limit = self.server.max_body
        if length > limit:
            self._send(*_error(413, "too_large", f"body of {length} bytes is over {limit}"),
                       close=True)
            self._drain(length)
            return
        self._send(*execute(self.server.registry, self.server.runner, self.rfile.read(length)))

    def _drain(self, length: int) -> None:
        # Closing with unread data makes the kernel send RST, and the client may never see our
        # 413: discard a moderately large body (never stored), give up on huge ones.
        if length > DRAIN_LIMIT:
            return
        try:
            self.connection.settimeout(2)
            while length > 0:
                chunk = self.rfile.read(min(length, 65536))
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # never wait for a request thread stuck on a hung tool

    def __init__(self, address: tuple[str, int], registry: ToolRegistry, runner: ToolRunner,
                 max_body: int) -> None:
        super().__init__(address, _Handler)
        self.registry = registry
        self.runner = runner
        self.max_body = max_body
        self.started = time.time()

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "pid": os.getpid(), "version": __version__,
                "tools": self.registry.names(), "inflight": self.runner.inflight,
                "uptime_s": round(time.time() - self.started, 3)}


class ToolServer:
    """An in-process tool server (``with ToolServer(registry, port=0) as s: s.url``)."""

    def __init__(self, registry: ToolRegistry | None = None, host: str = DEFAULT_HOST,
                 port: int = DEFAULT_PORT, *, timeout: float = DEFAULT_TIMEOUT,
                 max_body: int = MAX_BODY, max_inflight: int = MAX_INFLIGHT) -> None:
        self.registry = registry if registry is not None else ToolRegistry(builtins=True)
        self.httpd = _Server((host, port), self.registry, ToolRunner(timeout, max_inflight),
                             max_body)
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
    parser.add_argument("--no-entry-points", action="store_true",
                        help=f"do not load tools from the {'owllm.tools'!r} entry points")
    parser.add_argument("--quiet", action="store_true", help="no request log on stderr")
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
        registry = build_registry(args.tools_config, not args.no_entry_points, config)
        server = ToolServer(registry, args.host, args.port, timeout=timeout,
                            max_body=args.max_body)
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

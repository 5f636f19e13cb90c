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
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from owllm.config import Config, load_config
from owllm.errors import OwllmError, UsageError
from owllm.inenv import asgi_guard
from owllm.tools.calls import DEFAULT_TIMEOUT, MAX_INFLIGHT, ToolRunner, execute
from owllm.tools.httpd import MAX_BODY, MAX_CONNECTIONS, REQUEST_TIMEOUT, ToolHTTPServer
from owllm.tools.registry import ToolRegistry, tools_from_config

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_TIMEOUT", "MAX_BODY", "MAX_CONNECTIONS",
           "MAX_INFLIGHT", "REQUEST_TIMEOUT", "ToolRunner", "ToolServer", "build_registry",
           "execute", "main", "write_ready_file"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8763
log = logging.getLogger("owllm.tools.server")


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
        allowed = asgi_guard.parse_allowed_hosts(allowed_hosts)
        warning = asgi_guard.bind_warning(host, allowed)
        if warning:  # loud: printed whatever the logging setup
            print(f"owllm tool server: {warning}", file=sys.stderr, flush=True)
        self.httpd = ToolHTTPServer((host, port), self.registry, ToolRunner(timeout, max_inflight),
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


def _parser() -> argparse.ArgumentParser:
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
    parser.epilog = (f"Environment: {asgi_guard.API_KEY_VAR} requires 'Authorization: "
                     f"Bearer <key>' on every route but /health; "
                     f"{asgi_guard.ALLOWED_HOSTS_VAR} (comma-separated) adds Host/Origin names "
                     "besides loopback.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m owllm.tools.server``: serve until SIGTERM/SIGINT; 0 on a clean stop,
    2 on a bad config or an address that cannot be bound."""
    args = _parser().parse_args(argv)
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
                            api_key=os.environ.get(asgi_guard.API_KEY_VAR) or None,
                            allowed_hosts=os.environ.get(asgi_guard.ALLOWED_HOSTS_VAR))
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

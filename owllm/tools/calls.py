"""Running one tool call for the tool server: validation, a deadline per call, a bounded
number in flight, and the HTTP status and JSON body of every outcome.  No HTTP here: the
server (:mod:`owllm.tools.httpd`) passes the request body in and sends what comes back.
"""

from __future__ import annotations

import json
import logging
import threading
import traceback
from typing import Any

from owllm.tools.errors import ARGS_CODES, ToolCallError, ToolError, ToolTimeout
from owllm.tools.parser import ToolCall, parse_tool_call
from owllm.tools.registry import ToolRegistry, dumps_result
from owllm.tools.tool import Tool

DEFAULT_TIMEOUT = 10.0
MAX_INFLIGHT = 32
log = logging.getLogger("owllm.tools.server")  # one logger for the whole server's output


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
            raise Busy
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


class Busy(Exception):
    """Every call slot is taken (the caller answers 503)."""


def error_reply(status: int, code: str, message: str, path: str = "$",
                call_id: str | None = None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, the error body every refusal of the server has)."""
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
        return error_reply(400, "not_an_object", "POST /call takes one call; send parallel calls "
                      "as separate requests")
    call: ToolCall = parsed
    item = registry.get(call.tool)
    if item is None:  # unregistered between validation and now
        return error_reply(400, "unknown_tool", f"unknown tool {call.tool!r}", "$.tool", call.id)
    try:
        value = runner.run(item, call.args)
    except ToolError as exc:
        return error_reply(422, exc.code, exc.message, "$.args", call.id)
    except ToolTimeout as exc:
        return error_reply(504, "timeout", exc.message, "$", call.id)
    except Busy:
        return error_reply(503, "busy", f"{runner.max_inflight} calls already in flight", "$",
                      call.id)
    except BaseException as exc:
        return _crash(call, exc)
    try:
        encoded = dumps_result(value)
    except (TypeError, ValueError, RecursionError) as exc:
        log.error("tool %s returned a result that is not JSON: %r", call.tool, exc)
        return error_reply(500, "bad_result", f"the result of tool {call.tool!r} is not JSON "
                      "(the server log has the details)", "$", call.id)
    return 200, {"id": call.id, "tool": call.tool, "result": json.loads(encoded)}


def _crash(call: ToolCall, exc: BaseException) -> tuple[int, dict[str, Any]]:
    log.error("tool %s crashed:\n%s", call.tool,
              "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    # The exception text stays in the log: it can hold paths, secrets, internals.
    return error_reply(500, "tool_crashed", f"tool {call.tool!r} crashed ({type(exc).__name__}); "
                  "the server log has the details", "$", call.id)

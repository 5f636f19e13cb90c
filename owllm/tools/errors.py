"""Errors of the tool-calling layer.

``ToolCallError`` is the only exception :func:`owllm.tools.parse_tool_call` raises on bad input:
it carries a stable ``code`` (see :data:`CODES`), the JSON ``path`` of the fault (``$``,
``$.args.expression``, ``$[1].tool``) and a message that says what to fix.  ``ToolError`` is what
a tool raises when it rejects its (schema-valid) arguments; the server maps it to HTTP 422.
"""

from __future__ import annotations

from typing import Any

from owllm.errors import OwllmError

#: Every code ``ToolCallError.code`` can take, with what it means.
CODES: dict[str, str] = {
    "invalid_json": "the text is not exactly one strict JSON value (prose, fences, NaN, …)",
    "not_an_object": "a call must be a JSON object (or a non-empty array of objects)",
    "too_large": "the text, a number or the array of calls exceeds its size limit",
    "too_deep": "the JSON nests deeper than the limit",
    "duplicate_key": "an object repeats a key",
    "missing_field": "the envelope lacks tool, args or id",
    "unexpected_field": "the envelope has a key other than tool, args, id",
    "bad_tool_name": "tool is not a string matching ^[A-Za-z][A-Za-z0-9_]*$ (≤ 64 chars)",
    "bad_id": "id is not a non-empty string (≤ 128 chars)",
    "duplicate_id": "two calls of an array share an id",
    "unknown_tool": "no tool of that name is registered",
    "missing_required": "args lacks a required parameter",
    "unexpected_param": "args has a parameter the tool does not declare",
    "type_error": "a value has the wrong JSON type",
    "constraint": "a value breaks another schema rule (enum, minimum, pattern, …)",
}

#: Codes about the arguments (the envelope itself was fine): the server answers them with 422.
ARGS_CODES = frozenset({"missing_required", "unexpected_param", "type_error", "constraint"})


class ToolCallError(OwllmError):
    """A model's tool call was rejected.  ``code`` is stable; ``path`` locates the fault."""

    def __init__(self, code: str, path: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.path = path

    def __str__(self) -> str:
        text = f"{self.code} at {self.path}: {self.message}"
        return f"{text}\n  hint: {self.hint}" if self.hint else text

    def __reduce__(self) -> Any:  # keep it picklable (xdist, multiprocessing)
        return (_rebuild_call_error, (self.code, self.path, self.message, self.hint))

    def to_dict(self) -> dict[str, str]:
        """The error as the JSON body the server and the CLI print."""
        return {"code": self.code, "path": self.path, "message": self.message}


def _rebuild_call_error(code: str, path: str, message: str, hint: str | None) -> ToolCallError:
    return ToolCallError(code, path, message, hint=hint)


class ToolSpecError(OwllmError):
    """A tool definition (name, parameters schema, callable, config entry) is invalid."""

    exit_code = 2


class ToolError(OwllmError):
    """Raised by a tool that refuses its arguments or fails on purpose (division by zero).

    The server answers it with 422 and ``code`` (default ``tool_error``).
    """

    def __init__(self, message: str, *, code: str = "tool_error", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


class ToolTimeout(OwllmError):
    """A tool did not return before its deadline."""

    def __init__(self, tool: str, timeout: float) -> None:
        super().__init__(f"tool {tool!r} did not finish within {timeout:g} s",
                         hint="raise the tool's timeout, or make the tool faster")
        self.tool = tool
        self.timeout = timeout


class ToolServerError(OwllmError):
    """The tool server answered with an error (or could not be reached).

    ``status`` is the HTTP status (0 when unreachable), ``code``/``path`` come from the typed
    error body.
    """

    def __init__(self, status: int, code: str, message: str, path: str | None = None) -> None:
        super().__init__(f"tool server: {status} {code}: {message}")
        self.status = status
        self.code = code
        self.path = path

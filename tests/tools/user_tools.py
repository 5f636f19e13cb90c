"""User tools the server tests load through a tools config (not a test module)."""

from __future__ import annotations

import sys
import time
from typing import Any

from owllm.tools import ToolError, tool


def hang(seconds: float = 3600.0) -> str:
    """Sleep (far past the per-call timeout)."""
    time.sleep(seconds)
    return "woke up"


def crash() -> None:
    """Always raises."""
    raise RuntimeError("boom")


def leave() -> None:
    """Calls sys.exit inside the tool thread."""
    sys.exit(3)


def not_json(**_: Any) -> Any:
    """Returns something JSON cannot encode."""
    return object()


def refuse(**_: Any) -> None:
    """Rejects its args on purpose."""
    raise ToolError("not today", code="refused")


@tool(parameters={"type": "object", "properties": {"a": {"type": "integer"},
                                                   "b": {"type": "integer"}},
                  "required": ["a", "b"], "additionalProperties": False})
def add_tool(a: int, b: int) -> int:
    """Add two integers."""
    return a + b

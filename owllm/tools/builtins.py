"""The built-in tools: ``calculator``, ``echo`` and ``current_time``."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from owllm.tools.calculator import MAX_EXPRESSION_LENGTH, calculator
from owllm.tools.errors import ToolError
from owllm.tools.tool import Tool

MAX_ECHO = 10_000

CALCULATOR_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"expression": {
        "type": "string", "minLength": 1, "maxLength": MAX_EXPRESSION_LENGTH,
        "description": "arithmetic over numbers with + - * / // % ** and parentheses, "
                       "e.g. '42 * 17'"}},
    "required": ["expression"],
    "additionalProperties": False,
}
ECHO_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"text": {"type": "string", "maxLength": MAX_ECHO,
                            "description": "the text to return"}},
    "required": ["text"],
    "additionalProperties": False,
}
TIME_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"timezone": {
        "type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9_+/-]+$",
        "description": "an IANA time zone such as 'Europe/Paris'; default UTC"}},
    "additionalProperties": False,
}


def echo(text: str) -> str:
    """The ``echo`` tool: returns ``text`` unchanged."""
    return text


def current_time(timezone_name: str = "UTC") -> str:
    """The ``current_time`` tool: now, in ISO 8601, in UTC or the named IANA zone."""
    if timezone_name.upper() == "UTC":
        return datetime.now(timezone.utc).isoformat()
    try:
        zone = ZoneInfo(timezone_name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ToolError(f"unknown time zone {timezone_name!r}", code="unknown_timezone",
                        hint="use an IANA name such as 'UTC' or 'America/New_York'") from exc
    return datetime.now(zone).isoformat()


def _current_time_tool(timezone: str = "UTC") -> str:  # the arg is named as in the schema
    return current_time(timezone)


def builtin_tools() -> list[Tool]:
    """Fresh :class:`Tool` objects for the built-ins."""
    return [
        Tool("calculator", calculator, CALCULATOR_PARAMETERS,
             "Evaluate an arithmetic expression and return the number.", timeout=5.0),
        Tool("echo", echo, ECHO_PARAMETERS, "Return the given text unchanged."),
        Tool("current_time", _current_time_tool, TIME_PARAMETERS,
             "The current date and time (ISO 8601) in UTC or an IANA time zone."),
    ]

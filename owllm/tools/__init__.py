"""Strict JSON tool calling: the call envelope, a strict parser/validator, built-in and user
tools, a tool server, and prompt templates.

    >>> from owllm.tools import parse_tool_call
    >>> parse_tool_call('{"tool": "calculator", "args": {"expression": "42*17"}, "id": "c1"}')
    ToolCall(tool='calculator', args={'expression': '42*17'}, id='c1')
"""

from __future__ import annotations

from owllm.tools.errors import (
    ARGS_CODES,
    CODES,
    ToolCallError,
    ToolError,
    ToolServerError,
    ToolSpecError,
    ToolTimeout,
)
from owllm.tools.parser import ToolCall, loads_strict, parse_tool_call, validate_tool_call
from owllm.tools.registry import (
    Tool,
    ToolRegistry,
    default_registry,
    load_tools_config,
    register_tool,
    tool,
)
from owllm.tools.specs import ToolSet, compile_tools, load_envelope_schema, normalize_spec

__all__ = [
    "ARGS_CODES",
    "CODES",
    "Tool",
    "ToolCall",
    "ToolCallError",
    "ToolError",
    "ToolRegistry",
    "ToolServerError",
    "ToolSet",
    "ToolSpecError",
    "ToolTimeout",
    "compile_tools",
    "default_registry",
    "load_envelope_schema",
    "load_tools_config",
    "loads_strict",
    "normalize_spec",
    "parse_tool_call",
    "register_tool",
    "tool",
    "validate_tool_call",
]

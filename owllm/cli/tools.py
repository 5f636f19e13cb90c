"""``owllm tools validate``: strict verdict on a tool call read from stdin.

``serve``/``stop``/``status``/``smoke`` are added by the lead next to this (process management
is shared with the model servers); the server itself is ``python -m owllm.tools.server``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from owllm.config import load_config
from owllm.errors import ConfigError, UsageError
from owllm.tools.errors import ToolCallError, ToolSpecError
from owllm.tools.parser import MAX_TEXT_CHARS, parse_tool_call
from owllm.tools.registry import load_tools_specs, specs_from_config
from owllm.tools.specs import ToolSet, compile_tools
from owllm.yaml_lines import load_yaml


def register(subparsers: Any, parents: argparse.ArgumentParser | None = None) -> None:
    """Add ``validate`` to the ``tools`` group's subparsers."""
    validate = subparsers.add_parser(
        "validate", parents=[parents] if parents is not None else [],
        help="validate a tool call read from stdin; print a JSON verdict",
        description="Read a model's output on stdin and check it is exactly one strict tool "
                    "call (or a JSON array of calls). Prints {\"valid\": true, \"calls\": [...]} "
                    "or {\"valid\": false, \"error\": {\"code\", \"path\", \"message\"}}; "
                    "exits 0 valid, 1 invalid, 2 usage error.")
    validate.add_argument("--tools", metavar="FILE",
                          help="YAML/JSON tool specs (a list, or {tools: [...]}; OpenAI or bare "
                               "{name, parameters} form, a tools file with 'callable' import "
                               "paths, or an OWLLM llm_backends.yaml whose tools: entries are "
                               "used); default: the built-in and registered tools")
    validate.set_defaults(func=cmd_validate)


def load_tool_specs(path: str) -> ToolSet:
    """Tool specs from a file, compiled; raises :class:`UsageError` when unusable.

    Validating never imports: ``callable:`` entries are code, run only when the tool server
    serves them, so their specs are read from the file (name and ``parameters``)."""
    file = Path(path)
    try:
        data = load_yaml(file)  # the bounded loader every config goes through
    except ConfigError as exc:
        raise UsageError(f"cannot read --tools {path}: {exc}") from exc
    entries = data.get("tools") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise UsageError(f"--tools {path}: expected a list of tool specs or {{tools: [...]}}")
    try:
        if isinstance(data, dict) and "models" in data:  # an OWLLM config: its tools: entries
            return compile_tools(specs_from_config(load_config(file)))
        if any(isinstance(e, dict) and isinstance(e.get("function", e.get("callable")), str)
               for e in entries):
            return compile_tools(load_tools_specs(file))
        return compile_tools(entries)
    except (ToolSpecError, ConfigError) as exc:
        raise UsageError(f"--tools {path}: {exc}") from exc


def cmd_validate(args: argparse.Namespace) -> int:
    """Print the verdict; 0 valid, 1 invalid (usage errors raise :class:`UsageError`, 2)."""
    tools = load_tool_specs(args.tools) if getattr(args, "tools", None) else None
    text = sys.stdin.buffer.read(MAX_TEXT_CHARS * 4 + 1)
    try:
        parsed = parse_tool_call(text, tools)
    except ToolCallError as exc:
        print(json.dumps({"valid": False, "error": exc.to_dict()}))
        return 1
    calls = parsed if isinstance(parsed, list) else [parsed]
    print(json.dumps({"valid": True, "calls": [c.to_dict() for c in calls]}))
    return 0

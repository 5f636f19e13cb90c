"""``owllm tools validate``: strict verdict on a tool call read from stdin.

``serve``/``stop``/``status``/``smoke`` live in :mod:`owllm.cli.tools_server`; the server
itself is ``python -m owllm.tools.server``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from owllm.errors import ConfigError, UsageError
from owllm.tools.errors import ToolCallError, ToolSpecError
from owllm.tools.parser import MAX_TEXT_CHARS, parse_tool_call
from owllm.tools.registry import specs_from_file
from owllm.tools.specs import ToolSet


def register(subparsers: Any, parents: argparse.ArgumentParser) -> None:
    """Add ``validate`` to the ``tools`` group's subparsers."""
    validate = subparsers.add_parser(
        "validate", parents=[parents],
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
    """The ``--tools`` file's compiled specs (:func:`owllm.tools.registry.specs_from_file`);
    a file it cannot use is a :class:`UsageError` naming the option."""
    try:
        return specs_from_file(path)
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

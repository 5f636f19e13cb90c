"""Validations per second: ``parse_tool_call`` against plain ``jsonschema`` on the same calls.

Baselines, measured in the same run:
* fresh  — ``json.loads`` + a ``Draft202012Validator`` built per call for an ``anyOf`` schema
  of every tool's envelope (what a naive integration does);
* cached — the same with one validator built once.
Ours: ``parse_tool_call(text, specs)`` (the list of specs, looked up in the cache per call) and
``parse_tool_call(text, toolset)`` (pre-compiled).  Ours also does strictly more: duplicate
keys, NaN, size and depth limits, typed errors with paths.

``default_over_jsonschema`` (the issue's figure): the default API, ``parse_tool_call(text,
specs)``, over the cached jsonschema validator.

    python bench/validate.py [--seconds 1.0] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from jsonschema import Draft202012Validator

from owllm.tools import ToolCallError, ToolRegistry, compile_tools, parse_tool_call
from owllm.tools.prompts import tool_call_response_schema

WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "minLength": 1},
                                     "unit": {"enum": ["c", "f"]},
                                     "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city"], "additionalProperties": False}}}


def calls() -> list[str]:
    good = [
        {"tool": "calculator", "args": {"expression": "42*17"}, "id": "call_1"},
        {"tool": "echo", "args": {"text": "hello world"}, "id": "call_2"},
        {"tool": "current_time", "args": {"timezone": "Europe/Paris"}, "id": "call_3"},
        {"tool": "weather", "args": {"city": "Oslo", "unit": "c", "days": 3}, "id": "call_4"},
    ]
    bad = [
        {"tool": "calculator", "args": {}, "id": "call_5"},
        {"tool": "weather", "args": {"city": "Oslo", "days": 9}, "id": "call_6"},
    ]
    return [json.dumps(c) for c in good * 4 + bad]


def rate(func: Callable[[str], Any], texts: list[str], seconds: float) -> float:
    done, started = 0, time.perf_counter()
    while True:
        for text in texts:
            func(text)
        done += len(texts)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args()
    if not args.seconds > 0:
        parser.error(f"--seconds must be > 0, got {args.seconds}")
    specs = [*ToolRegistry(builtins=True).specs(), WEATHER]
    toolset = compile_tools(specs)
    schema = tool_call_response_schema(specs)
    for option in schema["anyOf"]:  # the plain baseline takes any id, like our envelope
        option["properties"]["id"] = {"type": "string", "minLength": 1, "maxLength": 128}
    cached = Draft202012Validator(schema)
    texts = calls()

    def ours_specs(text: str) -> Any:
        try:
            return parse_tool_call(text, specs)
        except ToolCallError as exc:
            return exc

    def ours_toolset(text: str) -> Any:
        try:
            return parse_tool_call(text, toolset)
        except ToolCallError as exc:
            return exc

    def plain_fresh(text: str) -> Any:
        return list(Draft202012Validator(schema).iter_errors(json.loads(text)))

    def plain_cached(text: str) -> Any:
        return list(cached.iter_errors(json.loads(text)))

    results = {name: rate(func, texts, args.seconds) for name, func in [
        ("jsonschema fresh validator per call", plain_fresh),
        ("jsonschema cached validator", plain_cached),
        ("parse_tool_call(text, specs)", ours_specs),
        ("parse_tool_call(text, toolset)", ours_toolset),
    ]}
    fresh = results["jsonschema fresh validator per call"]
    cached_rate = results["jsonschema cached validator"]
    if args.json:
        print(json.dumps({
            "default_over_jsonschema": results["parse_tool_call(text, specs)"] / cached_rate,
            "toolset_over_jsonschema": results["parse_tool_call(text, toolset)"] / cached_rate,
            "default_over_fresh": results["parse_tool_call(text, specs)"] / fresh,
            "calls_per_s": results, "calls": len(texts), "seconds": args.seconds}))
        return
    print(f"{len(texts)} calls ({sum(1 for t in texts if 'call_5' in t or 'call_6' in t)} "
          f"invalid), {args.seconds:g} s per measurement")
    for name, value in results.items():
        print(f"  {name:38s} {value:10.0f} calls/s   x{value / fresh:6.2f} vs fresh"
              f"   x{value / cached_rate:5.2f} vs cached")


if __name__ == "__main__":
    main()

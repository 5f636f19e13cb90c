"""The validator and ToolSet caches behind the default ``parse_tool_call(text, tools=[...])``:
the same answers as a pre-compiled ToolSet, never a stale validator, bounded size."""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from typing import Any

import pytest

from owllm.tools import ToolCall, ToolCallError, compile_tools, parse_tool_call
from owllm.tools import specs as specs_module
from owllm.tools.specs import canonical_key, compile_validator, toolset_for


def weather(maximum: Any = 7, enum: list[Any] | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {"city": {"type": "string"},
                             "days": {"type": "integer", "minimum": 1, "maximum": maximum}}
    if enum is not None:
        props["flag"] = {"enum": enum}
    return {"type": "function", "function": {"name": "weather", "parameters": {
        "type": "object", "properties": props, "required": ["city"],
        "additionalProperties": False}}}


def call(args: dict[str, Any]) -> str:
    return json.dumps({"tool": "weather", "args": args, "id": "c1"})


def code(text: str, tools: Any) -> str | None:
    try:
        parse_tool_call(text, tools)
    except ToolCallError as exc:
        return exc.code
    return None


def test_list_of_specs_gives_the_same_results_as_a_compiled_toolset() -> None:
    tools = [weather(), {"name": "ping", "parameters": {"type": "object"}}]
    toolset = compile_tools(tools)
    for args in ({"city": "Oslo", "days": 3}, {"city": "Oslo", "days": 9}, {"days": 2},
                 {"city": "Oslo", "extra": 1}):
        assert code(call(args), tools) == code(call(args), toolset)
    assert parse_tool_call(call({"city": "Oslo"}), tools) == ToolCall("weather",
                                                                       {"city": "Oslo"}, "c1")


def test_the_same_list_or_equal_content_reuses_one_toolset() -> None:
    tools = [weather(maximum=6)]
    first = toolset_for(tools)
    assert toolset_for(tools) is first  # identity path
    assert toolset_for(copy.deepcopy(tools)) is first  # canonical-JSON path
    assert toolset_for(iter(copy.deepcopy(tools))) is first  # any iterable
    reordered = {"function": dict(reversed(list(tools[0]["function"].items()))),
                 "type": "function"}
    assert toolset_for([reordered]) is first  # key order does not matter


def test_a_schema_changed_in_place_is_not_served_a_stale_validator() -> None:
    tools = [weather(maximum=7)]
    assert code(call({"city": "Oslo", "days": 5}), tools) is None
    tools[0]["function"]["parameters"]["properties"]["days"]["maximum"] = 3
    assert code(call({"city": "Oslo", "days": 5}), tools) == "constraint"
    tools.append({"name": "ping", "parameters": {"type": "object"}})
    assert code(json.dumps({"tool": "ping", "args": {}, "id": "p"}), tools) is None


def test_true_and_1_are_different_schemas() -> None:
    # Plain == says True == 1; JSON Schema's enum does not, and neither may the cache.
    tools = [weather(enum=[1])]
    assert code(call({"city": "Oslo", "flag": 1}), tools) is None
    tools[0]["function"]["parameters"]["properties"]["flag"]["enum"] = [True]
    assert code(call({"city": "Oslo", "flag": 1}), tools) == "constraint"
    assert code(call({"city": "Oslo", "flag": True}), tools) is None
    assert canonical_key({"enum": [1]}) != canonical_key({"enum": [True]})


def test_mutating_the_callers_schema_does_not_change_a_cached_validator() -> None:
    schema = weather(maximum=4)["function"]["parameters"]
    validator = compile_validator(schema)
    schema["properties"]["days"]["maximum"] = 100
    assert not validator.is_valid({"city": "Oslo", "days": 50})
    assert compile_validator(schema).is_valid({"city": "Oslo", "days": 50})


def test_caches_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(specs_module, "_CACHE_SIZE", 8)
    monkeypatch.setattr(specs_module, "_IDENTITY_SIZE", 4)
    for name in ("_VALIDATORS", "_TOOLSETS", "_BY_IDENTITY"):  # empty, as in a fresh process
        monkeypatch.setattr(specs_module, name, OrderedDict())
    kept = [[weather(maximum=10 + i)] for i in range(20)]  # alive: ids cannot be reused
    for tools in kept:
        assert code(call({"city": "Oslo", "days": 9}), tools) is None
    assert len(specs_module._VALIDATORS) <= 8
    assert len(specs_module._TOOLSETS) <= 8
    assert len(specs_module._BY_IDENTITY) <= 4
    # An evicted list is compiled again, correctly.
    assert code(call({"city": "Oslo", "days": 11}), kept[0]) == "constraint"


def test_specs_holding_objects_still_work_without_the_identity_path() -> None:
    class Tool:
        def spec(self) -> dict[str, Any]:
            return weather(maximum=2)

    tools = [Tool()]
    assert code(call({"city": "Oslo", "days": 2}), tools) is None
    assert code(call({"city": "Oslo", "days": 3}), tools) == "constraint"
    assert id(tools) not in specs_module._BY_IDENTITY

"""``quick_check``: the fast path of ``parse_tool_call`` never accepts what jsonschema refuses,
and leaves every schema it cannot judge exactly to jsonschema."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator

from owllm.tools import ToolCallError, parse_tool_call
from owllm.tools.specs import quick_check

SCHEMA = {"type": "object", "properties": {
    "city": {"type": "string", "minLength": 1, "maxLength": 5, "description": "a city"},
    "unit": {"enum": ["c", "f"]},
    "days": {"type": "integer", "minimum": 1, "maximum": 7},
    "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "flag": {"type": "boolean"},
    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
    "inner": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
    "anything": {}},
    "required": ["city"], "additionalProperties": False}

VALUES: list[Any] = [
    {"city": "Oslo"}, {"city": ""}, {"city": "Reykjavik"}, {"city": 3}, {}, [], "Oslo", None,
    {"city": "Oslo", "unit": "c"}, {"city": "Oslo", "unit": "k"}, {"city": "Oslo", "unit": 1},
    {"city": "Oslo", "days": 7}, {"city": "Oslo", "days": 8}, {"city": "Oslo", "days": 3.0},
    {"city": "Oslo", "days": True}, {"city": "Oslo", "days": 0}, {"city": "Oslo", "days": "3"},
    {"city": "Oslo", "ratio": 0.5}, {"city": "Oslo", "ratio": 0}, {"city": "Oslo", "ratio": 1},
    {"city": "Oslo", "ratio": False}, {"city": "Oslo", "flag": 1}, {"city": "Oslo", "flag": True},
    {"city": "Oslo", "tags": ["a", "b"]}, {"city": "Oslo", "tags": ["a", "b", "c"]},
    {"city": "Oslo", "tags": ["a", 2]}, {"city": "Oslo", "tags": "a"},
    {"city": "Oslo", "inner": {"x": 1}}, {"city": "Oslo", "inner": {}},
    {"city": "Oslo", "inner": {"x": 1, "y": 2}}, {"city": "Oslo", "anything": [None, {}]},
    {"city": "Oslo", "other": 1}, {"city": "Oslo", "unit": "c", "days": 2, "flag": False},
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: repr(v)[:40])
def test_never_accepts_what_jsonschema_refuses(value: Any) -> None:
    check = quick_check(SCHEMA)
    assert check is not None
    valid = Draft202012Validator(SCHEMA).is_valid(value)
    if check(value):
        assert valid, f"quick_check accepted {value!r}, jsonschema refuses it"


def test_accepts_the_plain_valid_calls() -> None:
    check = quick_check(SCHEMA)
    assert check is not None
    for value in ({"city": "Oslo"}, {"city": "Oslo", "unit": "f", "days": 1, "ratio": 0.25,
                                     "flag": False, "tags": [], "inner": {"x": 2}}):
        assert check(value)


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"s": {"type": "string", "format": "date"}}},
    {"type": "object", "properties": {"s": {"type": "string", "pattern": "^a"}}},
    {"type": "object", "properties": {"s": {"type": ["string", "null"]}}},
    {"type": "object", "additionalProperties": {"type": "string"}},
    {"type": "object", "properties": {"s": {"anyOf": [{"type": "string"}]}}},
    {"type": "object", "properties": {"s": {"enum": [1, True]}}},
    {"properties": {"s": {"type": "string"}}},  # no type: jsonschema judges non-objects
    {"$ref": "#/$defs/x", "$defs": {"x": {"type": "object"}}},
])
def test_leaves_other_schemas_to_jsonschema(schema: dict[str, Any]) -> None:
    assert quick_check(schema) is None


def test_parse_tool_call_errors_unchanged_on_the_fast_path() -> None:
    tools = [{"type": "function", "function": {"name": "w", "parameters": SCHEMA}}]
    call = parse_tool_call('{"tool": "w", "args": {"city": "Oslo", "days": 2}, "id": "c1"}',
                           tools)
    assert call.args == {"city": "Oslo", "days": 2}
    with pytest.raises(ToolCallError) as bad:
        parse_tool_call('{"tool": "w", "args": {"city": "Oslo", "days": 9}, "id": "c1"}', tools)
    assert bad.value.path == "$.args.days" and bad.value.code == "constraint"
    with pytest.raises(ToolCallError) as extra:
        parse_tool_call('{"tool": "w", "args": {"city": "Oslo", "x": 1}, "id": "c1"}', tools)
    assert extra.value.code == "unexpected_param"

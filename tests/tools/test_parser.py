"""parse_tool_call: strict JSON, the envelope, args against each tool's schema."""

from __future__ import annotations

import json
import pickle
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from owllm.errors import OwllmError
from owllm.tools import (
    CODES,
    ToolCall,
    ToolCallError,
    ToolSpecError,
    compile_tools,
    load_envelope_schema,
    parse_tool_call,
    validate_tool_call,
)
from owllm.tools.specs import compile_validator
from pytest_owllm.strategies import arbitrary_text, invalid_tool_calls, valid_tool_calls

FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

WEATHER = {"type": "function", "function": {
    "name": "weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "minLength": 1},
        "unit": {"enum": ["c", "f"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
        "required": ["city"], "additionalProperties": False}}}
BARE = {"name": "ping", "parameters": {"type": "object", "properties": {}}}
TOOLS = [WEATHER, BARE]


def call(tool: str = "calculator", args: object = None, id: object = "c1") -> str:
    return json.dumps({"tool": tool, "args": {"expression": "1+1"} if args is None else args,
                       "id": id})


def rejects(text: str, tools: object = None) -> ToolCallError:
    with pytest.raises(ToolCallError) as err:
        parse_tool_call(text, tools)  # type: ignore[arg-type]
    return err.value


def test_accepts_the_guide_example() -> None:
    text = '{"tool": "calculator", "args": {"expression": "42*17"}, "id": "call_123"}'
    assert parse_tool_call(text) == ToolCall("calculator", {"expression": "42*17"}, "call_123")
    assert parse_tool_call("\n  " + text + " \n").id == "call_123"
    assert parse_tool_call(text.encode()) == parse_tool_call(text)


def test_parallel_calls_are_a_list() -> None:
    text = json.dumps([json.loads(call(id="a")), {"tool": "echo", "args": {"text": "x"},
                                                  "id": "b"}])
    calls = parse_tool_call(text)
    assert isinstance(calls, list) and [c.id for c in calls] == ["a", "b"]
    err = rejects(json.dumps([json.loads(call(id="a")), json.loads(call(id="a"))]))
    assert (err.code, err.path) == ("duplicate_id", "$[1].id")
    err = rejects(json.dumps([json.loads(call()), {"tool": "calculator", "args": {}, "id": "z"}]))
    assert (err.code, err.path) == ("missing_required", "$[1].args.expression")


@pytest.mark.parametrize(("text", "code", "path"), [
    ('<tool_call>{"tool": "calculator"}</tool_call>', "invalid_json", "$"),
    ('calculator(expression="42*17")', "invalid_json", "$"),
    ('```json\n{"tool": "calculator", "args": {}, "id": "a"}\n```', "invalid_json", "$"),
    ('Sure: {"tool": "calculator", "args": {}, "id": "a"}', "invalid_json", "$"),
    ('{"tool": "calculator", "args": {"expression": "1"}, "id": "a"} ok', "invalid_json", "$"),
    ('{"tool": "calculator", "args": {"expression": NaN}, "id": "a"}', "invalid_json", "$"),
    ('{"tool": "calculator", "args": {"x": 1e999}, "id": "a"}', "invalid_json", "$"),
    ('{"tool": "calculator", "args": {"x": -Infinity}, "id": "a"}', "invalid_json", "$"),
    ("{'tool': 'calculator'}", "invalid_json", "$"),
    ("", "invalid_json", "$"),
    ("null", "not_an_object", "$"),
    ("[]", "not_an_object", "$"),
    ('{"tool": "calculator", "tool": "echo", "args": {}, "id": "a"}', "duplicate_key",
     "$.tool"),
    ('{"tool": "echo", "args": {"text": "a", "text": "b"}, "id": "a"}', "duplicate_key",
     "$.args.text"),
    ('{"tool": "echo", "args": {"text": "a"}}', "missing_field", "$.id"),
    ('{"name": "echo", "arguments": {}}', "unexpected_field", "$.name"),
    ('{"tool": "echo", "args": {"text": "a"}, "id": "a", "type": "x"}', "unexpected_field",
     "$.type"),
    ('{"tool": "calc-ulator", "args": {}, "id": "a"}', "bad_tool_name", "$.tool"),
    ('{"tool": "calc\\n", "args": {}, "id": "a"}', "bad_tool_name", "$.tool"),
    ('{"tool": 5, "args": {}, "id": "a"}', "bad_tool_name", "$.tool"),
    ('{"tool": "echo", "args": {"text": "a"}, "id": 5}', "bad_id", "$.id"),
    ('{"tool": "echo", "args": [], "id": "a"}', "type_error", "$.args"),
    ('{"tool": "web_search", "args": {}, "id": "a"}', "unknown_tool", "$.tool"),
    ('{"tool": "echo", "args": {"text": "a", "b c": 1}, "id": "a"}', "unexpected_param",
     '$.args["b c"]'),
    ('{"tool": "current_time", "args": {"timezone": "no zone"}, "id": "a"}', "constraint",
     "$.args.timezone"),
    ('{"tool": "echo", "args": {"text": ' + "9" * 300 + '}, "id": "a"}', "too_large", "$"),
])
def test_rejections(text: str, code: str, path: str) -> None:
    err = rejects(text)
    assert (err.code, err.path) == (code, path), err
    assert code in CODES and err.message
    assert isinstance(err, OwllmError)


@pytest.mark.parametrize(("args", "code", "path"), [
    ({}, "missing_required", "$.args.city"),
    ({"city": "x", "unit": "k"}, "constraint", "$.args.unit"),
    ({"city": "x", "days": 9}, "constraint", "$.args.days"),
    ({"city": ""}, "constraint", "$.args.city"),
    ({"city": "x", "days": "1"}, "type_error", "$.args.days"),
    ({"city": "x", "tags": ["a", 1]}, "type_error", "$.args.tags[1]"),
    ({"city": "x", "tags": ["a"] * 4}, "constraint", "$.args.tags"),
    ({"city": "x", "wind": True}, "unexpected_param", "$.args.wind"),
])
def test_user_tool_args(args: dict[str, object], code: str, path: str) -> None:
    err = rejects(call("weather", args), TOOLS)
    assert (err.code, err.path) == (code, path)
    assert parse_tool_call(call("weather", {"city": "Oslo", "days": 2}), TOOLS).tool == "weather"
    assert parse_tool_call(call("ping", {}), TOOLS).tool == "ping"  # the bare spec form


def test_size_and_depth_limits() -> None:
    assert rejects(" " * 2_000_000).code == "too_large"
    with pytest.raises(ToolCallError) as err:
        parse_tool_call(call("echo", {"text": "x" * 50}), max_size=20)
    assert err.value.code == "too_large"
    deep = call("echo", {"text": json.loads("[" * 40 + "]" * 40)})
    err2 = rejects(deep)
    assert err2.code == "too_deep" and err2.path.startswith("$.args.text[0]")
    many = json.dumps([json.loads(call(id=str(i))) for i in range(65)])
    assert rejects(many).code == "too_large"
    assert rejects("[" * 200_000).code == "too_deep"


def test_validate_tool_call_on_decoded_data() -> None:
    assert validate_tool_call(json.loads(call())).tool == "calculator"
    deep: object = {}
    for _ in range(100):
        deep = {"a": deep}
    with pytest.raises(ToolCallError) as err:
        validate_tool_call({"tool": "echo", "args": deep, "id": "x"})
    assert err.value.code == "too_deep"


def test_validators_are_compiled_once() -> None:
    schema = WEATHER["function"]["parameters"]  # type: ignore[index]
    assert compile_validator(schema) is compile_validator(json.loads(json.dumps(schema)))
    assert compile_tools(TOOLS).validators["weather"] is compile_validator(schema)


def test_bad_specs_raise_tool_spec_error() -> None:
    with pytest.raises(ToolSpecError):
        compile_tools([{"name": "9bad", "parameters": {}}])
    with pytest.raises(ToolSpecError):
        compile_tools([{"name": "ok", "parameters": {"type": "nonsense"}}])
    with pytest.raises(ToolSpecError):
        compile_tools([BARE, BARE])


def test_error_is_picklable_and_printable() -> None:
    err = rejects(call("nope"))
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.code, copy.path, copy.message) == (err.code, err.path, err.message)
    assert str(err).startswith("unknown_tool at $.tool:")
    assert err.to_dict() == {"code": "unknown_tool", "path": "$.tool", "message": err.message}


# -- properties ---------------------------------------------------------------------------

@FAST
@given(valid_tool_calls())
def test_every_valid_call_is_accepted(text: str) -> None:
    parsed = parse_tool_call(text)
    calls = parsed if isinstance(parsed, list) else [parsed]
    data = json.loads(text)
    assert [c.to_dict() for c in calls] == (data if isinstance(data, list) else [data])


@FAST
@given(valid_tool_calls(TOOLS))
def test_every_valid_user_tool_call_is_accepted(text: str) -> None:
    parse_tool_call(text, TOOLS)


@pytest.mark.parametrize("code", sorted(CODES))
def test_every_invalid_call_is_rejected_with_its_code_and_path(code: str) -> None:
    @settings(max_examples=25, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                     HealthCheck.large_base_example, HealthCheck.data_too_large])
    @given(invalid_tool_calls(code))
    def check(case: tuple[str, str]) -> None:
        text, expected = case
        err = rejects(text)
        assert (err.code, err.path) == (expected, case.path)  # type: ignore[attr-defined]

    check()


@pytest.mark.parametrize("code", ["missing_required", "unexpected_param", "type_error",
                                  "constraint", "unknown_tool", "duplicate_id"])
def test_invalid_user_tool_calls(code: str) -> None:
    @settings(max_examples=20, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(invalid_tool_calls(code, TOOLS))
    def check(case: tuple[str, str]) -> None:
        err = rejects(case[0], TOOLS)
        assert (err.code, err.path) == (case[1], case.path)  # type: ignore[attr-defined]

    check()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arbitrary_text())
def test_arbitrary_text_raises_only_tool_call_error(text: str) -> None:
    try:
        parse_tool_call(text)
    except ToolCallError as exc:
        assert exc.code in CODES and exc.path.startswith("$")


_ENVELOPE = Draft202012Validator(load_envelope_schema())
_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=140),
                    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                    st.lists(st.integers(), max_size=2))


@FAST
@given(st.dictionaries(st.sampled_from(["tool", "args", "id", "name", "x"]),
                       st.one_of(_VALUES, st.sampled_from(["echo", "Echo_1", "9x", "e-1"])),
                       max_size=5))
def test_hand_checks_agree_with_schema_json(envelope: dict[str, object]) -> None:
    """The fast envelope checks accept exactly what schema.json accepts (ECMA ``$``)."""
    tool = envelope.get("tool")
    if isinstance(tool, str) and tool.endswith("\n"):
        return  # Python's `$` matches before a final newline; ECMA's (and ours) does not
    any_tool = [{"name": tool if isinstance(tool, str) and re.fullmatch(
        r"[A-Za-z][A-Za-z0-9_]{0,63}", tool) else "echo", "parameters": {}}]
    try:
        validate_tool_call(envelope, any_tool)
        ours = True
    except ToolCallError as exc:
        ours = False
        assert exc.code in {"not_an_object", "missing_field", "unexpected_field",
                            "bad_tool_name", "bad_id", "type_error"}
    assert ours == _ENVELOPE.is_valid(envelope)

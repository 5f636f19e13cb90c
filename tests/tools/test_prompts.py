"""Prompt templates and the constrained-decoding schema."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from jsonschema import Draft202012Validator

from owllm.backends import backend_names, get_backend
from owllm.errors import UsageError
from owllm.tools import ToolRegistry, parse_tool_call
from owllm.tools.prompts import (
    LLAMACPP_TEMPLATE,
    TRANSFORMERS_TEMPLATE,
    VLLM_TEMPLATE,
    decodable,
    render_tools,
    template_for,
    tool_call_response_schema,
)
from pytest_owllm.strategies import valid_tool_calls

SPECS = ToolRegistry(builtins=True).specs()


@pytest.mark.parametrize("backend", backend_names())
def test_templates_format(backend: str) -> None:
    template = template_for(backend)
    text = template.format(tools=render_tools(SPECS), prompt="What is 42 * 17?")
    assert "What is 42 * 17?" in text and "calculator" in text
    assert '{"tool": "<tool name>", "args": {<arguments>}, "id": "call_1"}' in text
    assert "{tools}" not in text and "{prompt}" not in text


def test_template_for_asks_the_backend() -> None:
    for name in backend_names():
        assert template_for(name) is get_backend(name).prompt_template
    # the guide's names are the backends' own templates
    assert template_for("transformers") is TRANSFORMERS_TEMPLATE
    assert template_for("vllm") is VLLM_TEMPLATE
    assert template_for("llama.cpp") is template_for("llamacpp") is LLAMACPP_TEMPLATE
    assert len({template_for(n) for n in ("transformers", "vllm", "llamacpp")}) == 3


def test_unknown_backend_is_an_error_not_a_fallback() -> None:
    with pytest.raises(UsageError) as caught:
        template_for("other")
    assert "backend 'other' is not installed" in str(caught.value)
    assert f"installed backends: {', '.join(backend_names())}" in str(caught.value)


def test_render_tools_accepts_both_forms() -> None:
    text = render_tools([{"name": "ping", "parameters": {"type": "object"}}, SPECS[0]])
    assert text.splitlines()[0] == "- ping: (no description)"
    assert '"expression"' in text


def test_response_schema_shape() -> None:
    schema = tool_call_response_schema(SPECS)
    Draft202012Validator.check_schema(schema)
    assert [o["properties"]["tool"]["const"] for o in schema["anyOf"]] == [
        "calculator", "echo", "current_time"]
    for option in schema["anyOf"]:
        assert option["additionalProperties"] is False
        assert option["required"] == ["tool", "args", "id"]
        assert option["properties"]["args"]["additionalProperties"] is False
        # The pattern bounds the id (xgrammar rejects a pattern next to a length).
        ident = option["properties"]["id"]
        assert set(ident) == {"type", "pattern"} and ident["pattern"].endswith("{1,12}$")
    with pytest.raises(ValueError):
        tool_call_response_schema([])


def test_length_bounded_strings_become_an_equivalent_pattern() -> None:
    import re

    params = {"type": "object", "properties": {
        "short": {"type": "string", "minLength": 2, "maxLength": 4},
        "tagged": {"type": "string", "maxLength": 4, "pattern": "^a+$"},
        "free": {"type": "string"},
        "items": {"type": "array", "items": {"type": "string", "maxLength": 3}}}}
    lowered = decodable(params)
    short = lowered["properties"]["short"]
    assert set(short) == {"type", "pattern"}
    pattern = re.compile(short["pattern"])
    assert [bool(pattern.match(t)) for t in ("ab", "abcd", "a", "abcde", "a\tb", 'a"b')] == [
        True, True, False, False, False, False]
    assert lowered["properties"]["tagged"] == params["properties"]["tagged"]  # has a pattern
    assert lowered["properties"]["free"] == {"type": "string"}
    assert "pattern" in lowered["properties"]["items"]["items"]
    assert params["properties"]["short"] == {"type": "string", "minLength": 2,
                                             "maxLength": 4}  # the input is not touched


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_tool_calls(SPECS))
def test_what_the_schema_accepts_the_parser_accepts(text: str) -> None:
    """Anything a constrained decoder can emit under the schema parses as a valid call."""
    validator = Draft202012Validator(tool_call_response_schema(SPECS))
    data = json.loads(text)
    for item in data if isinstance(data, list) else [data]:
        item = dict(item, id="call_1")
        if validator.is_valid(item):
            assert parse_tool_call(json.dumps(item), SPECS)

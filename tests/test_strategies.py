"""``pytest_owllm.strategies.tool_specs``: the schemas the fuzz suite draws are valid tool
specs, and calls drawn for them parse (the strategies for calls themselves are exercised by
tests/tools/test_parser.py)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from owllm.tools import compile_tools, parse_tool_call
from pytest_owllm.strategies import SCALAR_SCHEMAS, tool_specs, valid_tool_calls


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_drawn_specs_compile_and_their_calls_parse(data: st.DataObject) -> None:
    specs: list[dict[str, Any]] = data.draw(tool_specs())
    compile_tools(specs)
    text = data.draw(valid_tool_calls(specs))
    parse_tool_call(text, tools=specs)


@settings(max_examples=20, deadline=None)
@given(specs=tool_specs(st.just(SCALAR_SCHEMAS[1])))
def test_scalars_narrow_the_argument_schemas(specs: list[dict[str, Any]]) -> None:
    for spec in specs:
        props = spec["function"]["parameters"]["properties"]
        assert all(schema == {"type": "boolean"} for schema in props.values())

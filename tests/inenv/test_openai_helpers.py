"""The servers' pure helpers (stdlib only), imported as the host imports in-env modules."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from owllm.inenv import openai_helpers as H
from tests.inenv.conftest import TRANSFORMERS_ENV_PACKAGES


def test_inside_string() -> None:
    assert H.inside_string('{"a')
    assert not H.inside_string('{"a":"b"')
    assert H.inside_string('{"a":"b\\"')  # an escaped quote does not close
    assert not H.inside_string('{"a":"b\\\\"')  # an escaped backslash does not escape


def test_stops() -> None:
    assert H.first_stop("hello world", ["wor", "lo"]) == 3
    assert H.first_stop("hello", ["x"]) is None
    assert H.safe_prefix("hello wo", ["world"]) == "hello "  # may still become the stop
    assert H.safe_prefix("abc\ufffd", []) == "abc"  # half a UTF-8 character waits


def test_parse_tool_calls() -> None:
    (call,) = H.parse_tool_calls('{"tool": "calc", "args": {"x": 1}, "id": "call_7"}')
    assert call == {"id": "call_7", "type": "function",
                    "function": {"name": "calc", "arguments": json.dumps({"x": 1})}}
    calls = H.parse_tool_calls('[{"name": "a", "arguments": {}}, {"name": "b"}]')
    assert [c["function"]["name"] for c in calls] == ["a", "b"]
    assert H.parse_tool_calls("plain text") is None
    assert H.parse_tool_calls('{"no": "name"}') is None


def test_tool_call_schema() -> None:
    tools = [{"type": "function", "function": {"name": "a", "parameters": {"type": "object"}}},
             {"type": "function", "function": {"name": "b"}}]
    assert H.tool_call_schema(tools, "auto") is None
    assert "anyOf" in H.tool_call_schema(tools, "required")
    named = H.tool_call_schema(tools, {"type": "function", "function": {"name": "b"}})
    assert named["properties"]["tool"] == {"const": "b"}
    with pytest.raises(H.ApiError) as caught:
        H.tool_call_schema(tools, {"type": "function", "function": {"name": "zzz"}})
    assert caught.value.status == 400


def test_format_schema() -> None:
    assert H.format_schema({"type": "json_object"}) == {"type": "object"}
    schema = {"type": "integer"}
    assert H.format_schema({"type": "json_schema", "json_schema": {"schema": schema}}) == schema
    for bad in ({"type": "xml"}, {"type": "json_schema", "json_schema": {"schema": 3}}):
        with pytest.raises(H.ApiError):
            H.format_schema(bad)


def test_env_has_the_server_packages(transformers_python: Path) -> None:
    script = ("import json, importlib.metadata as m, sys\n"
              "missing = []\n"
              "for name in json.loads(sys.argv[1]):\n"
              "    try: m.version(name)\n"
              "    except m.PackageNotFoundError: missing.append(name)\n"
              "print(json.dumps(missing))\n")
    result = subprocess.run([str(transformers_python), "-c", script,
                             json.dumps(TRANSFORMERS_ENV_PACKAGES)],
                            capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(result.stdout) == []


def test_reply_shapes_bodies_and_chunks() -> None:
    chat = H.Reply(chat=True, model_id="m", prompt_tokens=5)
    assert chat.rid.startswith("chatcmpl-") and chat.kind == "chat.completion"
    body = chat.body('{"tool": "calc", "args": {}, "id": "call_1"}', 3, "stop", tools=True)
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["choices"][0]["message"]["content"] is None
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    first = json.loads(chat.chunk("", None, first=True)[len("data: "):])
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"] == {"role": "assistant"}
    assert json.loads(chat.usage_chunk(2)[6:])["usage"]["total_tokens"] == 7
    text = H.Reply(chat=False, model_id="m", prompt_tokens=1)
    assert text.rid.startswith("cmpl-")
    assert text.body("hi", 1, "length", tools=False)["choices"][0] == {
        "index": 0, "text": "hi", "finish_reason": "length"}
    assert json.loads(text.chunk("x", None)[6:])["object"] == "text_completion"

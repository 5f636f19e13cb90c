"""Forced tool calls streamed as they are generated (owllm/inenv/tool_stream.py): the name
once, as soon as the arguments begin; the arguments' own text in pieces; complete only when
every call's arguments close."""

from __future__ import annotations

import json
from typing import Any

import pytest

from owllm.inenv.tool_stream import CallStream


def feed(pieces: list[str]) -> tuple[CallStream, list[list[dict[str, Any]]]]:
    stream = CallStream()
    out: list[list[dict[str, Any]]] = []
    for piece in pieces:
        out += stream.feed(piece)
    return stream, out


def characters(text: str) -> list[str]:
    return list(text)


ONE = '{"tool":"get_weather","args":{"city":"Pa\\"ris}","n":[1,{"a":2}]},"id":"call_1"}'


@pytest.mark.parametrize("cut", [characters, lambda t: [t], lambda t: [t[:17], t[17:40], t[40:]]])
def test_one_call_streams_its_name_once_then_its_arguments(cut: Any) -> None:
    stream, out = feed(cut(ONE))
    head, *rest = out
    assert head == [{"index": 0, "id": head[0]["id"], "type": "function",
                     "function": {"name": "get_weather", "arguments": ""}}]
    assert head[0]["id"].startswith("call_")
    assert all(d == [{"index": 0, "function": {"arguments": d[0]["function"]["arguments"]}}]
               for d in rest)
    arguments = "".join(d[0]["function"]["arguments"] for d in rest)
    assert json.loads(arguments) == {"city": 'Pa"ris}', "n": [1, {"a": 2}]}
    assert stream.complete


def test_the_name_goes_out_before_the_arguments_end() -> None:
    stream = CallStream()
    first = stream.feed('{"tool": "echo", "args": {"text": "he')
    assert [d[0].get("function", {}).get("name") for d in first] == ["echo", None]
    assert first[1][0]["function"]["arguments"] == '{"text": "he'
    assert not stream.complete  # cut here (max_tokens): not a complete call
    assert stream.feed('llo"}, "id": "call_2"}')[0][0]["function"]["arguments"] == 'llo"}'
    assert stream.complete


def test_parallel_calls_get_their_own_index_and_id() -> None:
    text = '[{"tool":"a","args":{}},{"tool":"b","args":{"x":1},"id":"call_2"}]'
    stream, out = feed(characters(text))
    heads = [d[0] for d in out if "id" in d[0]]
    assert [(h["index"], h["function"]["name"]) for h in heads] == [(0, "a"), (1, "b")]
    assert heads[0]["id"] != heads[1]["id"]
    by_index: dict[int, str] = {}
    for deltas in out:
        by_index[deltas[0]["index"]] = by_index.get(deltas[0]["index"], "") + \
            deltas[0]["function"]["arguments"]
    assert by_index == {0: "{}", 1: '{"x":1}'}
    assert stream.complete


def test_nothing_before_an_envelope_and_no_call_is_not_complete() -> None:
    stream, out = feed(['{"to', 'ol"'])
    assert out == [] and not stream.complete

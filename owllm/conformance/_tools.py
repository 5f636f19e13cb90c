"""Checks of the OpenAI tools API: ``tool_choice`` required / named / auto / none, streamed
``tool_calls`` deltas, ``finish_reason`` of a cut call, and a ``role: tool`` message back in.

The tool's arguments are enums only, so a complete call is short on any model (a
random-weight one included: ~70 tokens where a 512-token vocabulary spells it almost
character by character, ~25 on a real model's vocabulary) and, within 128 tokens, a cut one
is a server's doing, not the model's."""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from owllm.conformance._basic import chat
from owllm.conformance._core import Check, Outcome, Target, verdict

PARAMS = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
          "properties": {"city": {"type": "string", "enum": ["Paris", "Tokyo"]},
                         "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.", "parameters": PARAMS}}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
MAX_TOKENS = 128  # a tiny vocabulary spells a call in ~70 tokens (demo: 512 tokens)
REFUSABLE = ("tools", "tool_choice")


def _args_problem(arguments: str | None) -> str | None:
    """None when ``arguments`` is JSON valid against the tool's parameters."""
    try:
        jsonschema.validate(json.loads(arguments or ""), PARAMS)
    except ValueError:
        return f"arguments are not JSON: {str(arguments)[:80]!r}"
    except jsonschema.ValidationError as exc:
        return f"arguments do not fit the schema: {exc.message[:80]}"
    return None


def _call_outcome(r: Any, expected: str) -> Outcome:
    """A response that must hold one valid ``get_weather`` call."""
    choice = r.choices[0]
    calls = choice.message.tool_calls or []
    if not calls:
        return verdict(False, f"no tool_calls; content {str(choice.message.content)[:60]!r}, "
                       f"finish_reason {choice.finish_reason!r}", expected)
    call = calls[0]
    problems = [p for p in (
        None if call.function.name == "get_weather" else f"name {call.function.name!r}",
        None if call.id else "no call id",
        _args_problem(call.function.arguments),
        None if choice.finish_reason in ("tool_calls", "stop") else
        f"finish_reason {choice.finish_reason!r}") if p]
    return verdict(not problems, f"{call.function.name}({call.function.arguments}), "
                   f"finish_reason {choice.finish_reason!r}"[:200], expected,
                   "; ".join(problems))


def _required(t: Target) -> Outcome:
    r = chat(t, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=MAX_TOKENS,
             temperature=0)
    return _call_outcome(r, "a get_weather call with schema-valid JSON arguments")


def _named(t: Target) -> Outcome:
    r = chat(t, messages=ASK, tools=TOOLS, tool_choice=NAMED, max_tokens=MAX_TOKENS,
             temperature=0)
    return _call_outcome(r, "a get_weather call with schema-valid JSON arguments")


def _auto(t: Target) -> Outcome:
    r = chat(t, messages=ASK, tools=TOOLS, tool_choice="auto", max_tokens=MAX_TOKENS,
             temperature=0)
    if r.choices[0].message.tool_calls:
        return _call_outcome(r, "text, or a valid get_weather call")
    content = r.choices[0].message.content
    return verdict(isinstance(content, str), f"text {str(content)[:60]!r}",
                   "text, or a valid get_weather call")


def _none(t: Target) -> Outcome:
    r = chat(t, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=16, temperature=0)
    message = r.choices[0].message
    ok = not message.tool_calls and isinstance(message.content, str) and (
        r.choices[0].finish_reason != "tool_calls")
    return verdict(ok, f"tool_calls {bool(message.tool_calls)}, content "
                   f"{str(message.content)[:60]!r}, finish_reason {r.choices[0].finish_reason!r}",
                   "text and no tool_calls")


def _stream_deltas(t: Target) -> Outcome:
    chunks = list(chat(t, messages=ASK, tools=TOOLS, tool_choice=NAMED, stream=True,
                       max_tokens=MAX_TOKENS, temperature=0))
    deltas = [d for k in chunks for c in k.choices for d in (c.delta.tool_calls or [])]
    names = [d.function.name for d in deltas if d.function and d.function.name]
    pieces = [d.function.arguments for d in deltas if d.function and d.function.arguments]
    ids = {d.id for d in deltas if d.id}
    problem = (None if names == ["get_weather"] else f"function names {names[:5]}"
               f"{' ...' if len(names) > 5 else ''} ({len(names)})") or (
        None if len(ids) == 1 else f"{len(ids)} call ids") or _args_problem("".join(pieces))
    return verdict(problem is None, f"{len(deltas)} deltas: name x{len(names)}, "
                   f"{len(pieces)} argument pieces joining to {''.join(pieces)[:80]!r}",
                   "the name once, one id, argument pieces that join to valid JSON",
                   problem or "")


def _finish_reason(t: Target) -> Outcome:
    r = chat(t, messages=ASK, tools=TOOLS, tool_choice=NAMED, max_tokens=3, temperature=0)
    choice = r.choices[0]
    calls = choice.message.tool_calls or []
    arguments = calls[0].function.arguments if calls else None
    complete = bool(calls) and _args_problem(arguments) is None
    ok = choice.finish_reason == "length" if not complete else choice.finish_reason in (
        "tool_calls", "stop")
    return verdict(ok, f"finish_reason {choice.finish_reason!r}, arguments "
                   f"{str(arguments)[:60]!r} after max_tokens 3",
                   "'length' for a call cut by max_tokens ('tool_calls' only for a complete "
                   "call)")


def _round_trip(t: Target) -> Outcome:
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'}]
    # No tools in the request: the conversation alone must be accepted (OpenAI's API takes
    # it so; sending tools would also test tool_choice "auto", which tools.auto does).
    r = chat(t, messages=messages, max_tokens=16, temperature=0)
    choice = r.choices[0]
    ok = choice.message.role == "assistant" and choice.finish_reason in (
        "stop", "length", "tool_calls")
    return verdict(ok, f"HTTP 200, finish_reason {choice.finish_reason!r}, content "
                   f"{str(choice.message.content)[:60]!r}",
                   "a 200 answer to a conversation holding a tool call and its result")


CHECKS = (
    Check("tools.required", "tools=[get_weather], tool_choice 'required'",
          "a get_weather call, schema-valid JSON arguments", _required, REFUSABLE),
    Check("tools.named", "tools=[get_weather], tool_choice {function: get_weather}",
          "a get_weather call, schema-valid JSON arguments", _named, REFUSABLE),
    Check("tools.auto", "tools=[get_weather], tool_choice 'auto'",
          "text, or a valid get_weather call (both conformant)", _auto, REFUSABLE),
    Check("tools.none", "tools=[get_weather], tool_choice 'none'", "text, no tool_calls",
          _none, REFUSABLE),
    Check("tools.stream_deltas", "named tool_choice, stream: true",
          "the name in one delta, argument pieces joining to valid JSON", _stream_deltas,
          REFUSABLE),
    Check("tools.finish_reason", "named tool_choice, max_tokens 3",
          "'length' for a cut call; 'tool_calls' only for a complete one", _finish_reason,
          REFUSABLE),
    Check("tools.tool_message_round_trip", "an assistant tool call and a role: tool result",
          "a 200 assistant answer", _round_trip, REFUSABLE),
)

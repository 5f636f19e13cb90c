"""Scoring: every reason, reached through the real strict parser."""

from __future__ import annotations

import json

import pytest

from owllm.quality import REASONS, parse_cases, runaway_kind, score
from owllm.quality.cases import Case


def case(category: str, tools: list[str], expected: list[dict[str, object]] | None) -> Case:
    line = {"id": "c", "category": category, "prompt": "p", "tools": tools,
            "expected": expected}
    return parse_cases(json.dumps(line))[0]


CALC = {"tool": "calculator", "args": {"expression": "42 * 17"}}
ECHO = {"tool": "echo", "args": {"text": "hi there"}}
TIME = {"tool": "current_time", "args": {"timezone": "Asia/Tokyo"}}
SIMPLE = case("simple", ["calculator"], [CALC])
MULTIPLE = case("multiple", ["calculator", "echo", "current_time"], [TIME])
PARALLEL = case("parallel", ["calculator", "echo"], [CALC, ECHO])
NONE = case("irrelevance", ["calculator"], None)


def call(tool: str, args: dict[str, object], id_: str = "call_1") -> str:
    return json.dumps({"tool": tool, "args": args, "id": id_})


# (case, reply, reason, parser code or None)
TABLE = [
    (SIMPLE, call("calculator", {"expression": "42 * 17"}), "pass", None),
    (SIMPLE, "  " + call("calculator", {"expression": "42  *\t17"}) + "\n", "pass", None),
    (MULTIPLE, call("current_time", {"timezone": "Asia/Tokyo"}), "pass", None),
    (PARALLEL, json.dumps([json.loads(call("echo", {"text": "hi there"}, "b")),
                           json.loads(call("calculator", {"expression": "42 * 17"}))]),
     "pass", None),
    (NONE, "I cannot help with that.", "pass", None),
    (NONE, "", "pass", None),
    (NONE, "42", "pass", None),
    (NONE, call("calculator", {"expression": "1 + 1"}), "unexpected_call", None),
    (SIMPLE, "The answer is 714.", "prose", "invalid_json"),
    (SIMPLE, "```json\n" + call("calculator", {"expression": "42 * 17"}) + "\n```", "bad_json",
     "invalid_json"),
    (SIMPLE, 'Sure: {"tool": "calculator"}', "bad_json", "invalid_json"),
    (SIMPLE, '{"tool": "calculator", "tool": "calculator", "args": {}, "id": "x"}', "bad_json",
     "duplicate_key"),
    (SIMPLE, '"calculator"', "bad_json", "not_an_object"),
    (SIMPLE, '{"tool": "calculator", "args": {"expression": "1"}}', "bad_envelope",
     "missing_field"),
    (SIMPLE, '{"tool": "calculator", "args": {"expression": "1"}, "id": "a", "x": 1}',
     "bad_envelope", "unexpected_field"),
    (SIMPLE, call("calculator", {"expression": "42 * 17"}, ""), "bad_envelope", "bad_id"),
    (SIMPLE, call("weather", {"city": "Paris"}), "wrong_tool", "unknown_tool"),
    (MULTIPLE, call("echo", {"text": "Asia/Tokyo"}), "wrong_tool", None),
    (SIMPLE, call("calculator", {}), "missing_args", "missing_required"),
    (MULTIPLE, call("current_time", {}), "missing_args", None),
    (SIMPLE, call("calculator", {"expression": "42 * 17", "precise": True}), "extra_args",
     "unexpected_param"),
    (SIMPLE, call("calculator", {"expression": 714}), "wrong_args", "type_error"),
    (SIMPLE, call("calculator", {"expression": ""}), "wrong_args", "constraint"),
    (SIMPLE, call("calculator", {"expression": "42 * 18"}), "wrong_args", None),
    (PARALLEL, call("calculator", {"expression": "42 * 17"}), "wrong_count", None),
    (PARALLEL, json.dumps([json.loads(call("echo", {"text": "bye"}, "b")),
                           json.loads(call("calculator", {"expression": "42 * 17"}))]),
     "wrong_args", None),
]


@pytest.mark.parametrize(("the_case", "reply", "reason", "code"), TABLE,
                         ids=[f"{r}-{i}" for i, (_, _, r, _) in enumerate(TABLE)])
def test_reason(the_case: Case, reply: str, reason: str, code: str | None) -> None:
    result = score(reply, the_case, finish_reason="stop", completion_tokens=20,
                   max_tokens=128)
    assert (result.reason, result.code) == (reason, code), result
    assert result.passed is (reason == "pass")


def test_every_reason_is_covered_by_the_table() -> None:
    covered = {r for _, _, r, _ in TABLE} | {"runaway", "truncated", "request_failed"}
    assert covered == set(REASONS)


def test_wrong_args_detail_names_the_argument() -> None:
    result = score(call("calculator", {"expression": "42 * 18"}), SIMPLE)
    assert result.path == "$.args.expression"
    assert "'42 * 18'" in result.detail and "'42 * 17'" in result.detail


@pytest.mark.parametrize(("reply", "kind"), [
    ('{"tool": "calculator", "args": {"expression": "4' + " " * 40, "whitespace"),
    ('{"tool": "calculator", "args": {' + "\n" * 20 + "   \t" * 10, "whitespace"),
    ('{"tool": "calculator", "args": {"expression": "' + "1 + " * 30, "repetition"),
    ("I think " + "the answer is " * 10, "repetition"),
    ('{"tool": "echo", "args": {"text": "' + "a" * 60, "repetition"),
])
def test_runaway_at_the_token_limit(reply: str, kind: str) -> None:
    assert runaway_kind(reply) == kind
    result = score(reply, SIMPLE, finish_reason="length", completion_tokens=128)
    assert result.reason == "runaway"
    assert result.detail == f"{kind} until 128 tokens"
    # Irrelevance cases too: a loop is a loop, call or not.
    assert score(reply, NONE, finish_reason="length", completion_tokens=128).reason == "runaway"
    # Without finish_reason, reaching max_tokens counts as hitting the limit.
    assert score(reply, SIMPLE, completion_tokens=64, max_tokens=64).reason == "runaway"
    # A reply that stopped on its own is not a runaway, whatever it looks like.
    assert score(reply, SIMPLE, finish_reason="stop").reason != "runaway"


def test_cut_off_without_a_loop_is_truncated() -> None:
    reply = '{"tool": "calculator", "args": {"expression": "42 * 17'
    assert runaway_kind(reply) is None
    result = score(reply, SIMPLE, finish_reason="length", completion_tokens=16)
    assert (result.reason, result.code) == ("truncated", "invalid_json")
    assert score(reply, SIMPLE, finish_reason="stop").reason == "bad_json"


def test_an_ordinary_call_is_not_a_runaway() -> None:
    assert runaway_kind(call("calculator", {"expression": "42 * 17"})) is None
    assert runaway_kind(call("echo", {"text": "one two three four five six"})) is None

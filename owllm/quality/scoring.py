"""Scoring one model reply against a case: OWLLM's strict parser first, then the expectation.

Every reply gets exactly one reason (:data:`REASONS`); ``pass`` is the only passing one.  A
parser rejection keeps the parser's typed code (``ToolCallError.code``) beside the reason, so
a report can count both ("wrong_args: 7, of which type_error 5, constraint 2").

Runaway (issue 17, part 6): a reply that hit the token limit while padding whitespace or
repeating a short unit (xgrammar #345, llama.cpp's whitespace grammar) is ``runaway``, with
the token count, whatever else it holds; a reply cut off by the limit without such a pattern
is ``truncated``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from owllm.quality.cases import Case, ExpectedCall
from owllm.tools import ToolCall, ToolCallError, loads_strict, parse_tool_call

#: Every reason a sample can get, with what it means.
REASONS: dict[str, str] = {
    "pass": "the reply is the call(s) due, or no call where none was due",
    "prose": "text where a call was due (no JSON object or array in the reply)",
    "bad_json": "the reply is not exactly one strict JSON value (fences, prose around it, "
                "NaN, duplicate keys, not an object)",
    "bad_envelope": "JSON, but not a call envelope (missing/unexpected field, bad tool name "
                    "or id)",
    "wrong_tool": "a tool other than the one due (or one that is not offered)",
    "missing_args": "an argument that is due is missing",
    "extra_args": "an argument that is not due (or not declared) is present",
    "wrong_args": "an argument has the wrong value or type",
    "wrong_count": "not as many calls as are due",
    "unexpected_call": "a call where none was due",
    "runaway": "the reply pads whitespace or repeats until max_tokens",
    "truncated": "the reply hit max_tokens before the call was complete",
    "request_failed": "the endpoint did not answer (after retries) or answered an error",
}

_CODE_REASONS = {
    "invalid_json": "bad_json", "too_large": "bad_json", "too_deep": "bad_json",
    "duplicate_key": "bad_json", "not_an_object": "bad_json",
    "missing_field": "bad_envelope", "unexpected_field": "bad_envelope",
    "bad_tool_name": "bad_envelope", "bad_id": "bad_envelope", "duplicate_id": "bad_envelope",
    "unknown_tool": "wrong_tool", "missing_required": "missing_args",
    "unexpected_param": "extra_args", "type_error": "wrong_args", "constraint": "wrong_args",
}

RUNAWAY_MIN_SPAN = 32  #: chars of periodic tail that count as repetition
RUNAWAY_MAX_UNIT = 40  #: longest repeated unit looked for
RUNAWAY_WHITESPACE = 16  #: trailing whitespace chars that count as padding


@dataclass(frozen=True)
class Score:
    """The verdict on one reply: ``reason`` (a key of :data:`REASONS`), the parser's ``code``
    and ``path`` when it rejected the reply, and a short human ``detail``."""

    reason: str
    code: str | None = None
    path: str | None = None
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.reason == "pass"


def runaway_kind(text: str) -> str | None:
    """``"whitespace"`` or ``"repetition"`` when the end of ``text`` looks like a decoder
    stuck in a loop, else None.  Only meaningful for a reply that hit its token limit."""
    stripped = text.rstrip()
    if len(text) - len(stripped) >= RUNAWAY_WHITESPACE:
        return "whitespace"
    if re.search(rf"\s{{{RUNAWAY_WHITESPACE},}}", text[-4 * RUNAWAY_WHITESPACE:]):
        return "whitespace"
    for unit in range(1, RUNAWAY_MAX_UNIT + 1):
        span = max(3 * unit, RUNAWAY_MIN_SPAN)
        if len(stripped) < span:
            break
        tail = stripped[-span:]
        if tail[:-unit] == tail[unit:]:
            return "whitespace" if not tail.strip() else "repetition"
    return None


def _hit_limit(finish_reason: str | None, tokens: int | None, max_tokens: int | None) -> bool:
    if finish_reason is not None:
        return finish_reason == "length"
    return tokens is not None and max_tokens is not None and tokens >= max_tokens


def score(text: str, case: Case, *, finish_reason: str | None = None,
          completion_tokens: int | None = None, max_tokens: int | None = None) -> Score:
    """Score one reply ``text`` to ``case`` (``finish_reason``/``completion_tokens`` from the
    response; without a finish reason, reaching ``max_tokens`` counts as hitting the limit)."""
    limited = _hit_limit(finish_reason, completion_tokens, max_tokens)
    if limited:
        kind = runaway_kind(text)
        if kind is not None:
            count = f"{completion_tokens} tokens" if completion_tokens is not None \
                else "the token limit"
            return Score("runaway", detail=f"{kind} until {count}")
    if not case.expected:
        return _score_no_call(text)
    try:
        parsed = parse_tool_call(text, tools=list(case.tools))
    except ToolCallError as exc:
        return _rejected(text, exc, limited)
    calls = parsed if isinstance(parsed, list) else [parsed]
    return compare(calls, list(case.expected))


def _score_no_call(text: str) -> Score:
    try:
        value = loads_strict(text)
    except ToolCallError:
        return Score("pass")
    if isinstance(value, (dict, list)):
        return Score("unexpected_call", detail="a JSON call where no tool applies")
    return Score("pass")


def _rejected(text: str, exc: ToolCallError, limited: bool) -> Score:
    if exc.code == "invalid_json":
        if "{" not in text and "[" not in text:
            return Score("prose", exc.code, exc.path, _clip(text))
        if limited:
            return Score("truncated", exc.code, exc.path, "cut off at max_tokens")
    reason = _CODE_REASONS.get(exc.code, "bad_json")
    return Score(reason, exc.code, exc.path, exc.message)


def _clip(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def same_value(got: Any, want: Any) -> bool:
    """JSON equality where strings compare with whitespace runs collapsed, numbers by value
    (``1 == 1.0``) and booleans only with booleans."""
    if isinstance(want, str):
        return isinstance(got, str) and " ".join(got.split()) == " ".join(want.split())
    if isinstance(want, bool) or isinstance(got, bool):
        return type(got) is type(want) and got == want
    if isinstance(want, (int, float)):
        return isinstance(got, (int, float)) and got == want
    if isinstance(want, dict):
        return isinstance(got, dict) and set(got) == set(want) and all(
            same_value(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(
            same_value(g, w) for g, w in zip(got, want, strict=True))
    return bool(got == want)


def compare(calls: list[ToolCall], expected: list[ExpectedCall]) -> Score:
    """Valid calls against the calls due (order-free, as BFCL's parallel category)."""
    if len(calls) != len(expected):
        return Score("wrong_count", detail=f"{len(calls)} call(s), {len(expected)} due")
    left = list(calls)
    unmatched: list[ExpectedCall] = []
    for want in expected:
        hit = next((c for c in left if c.tool == want.tool and same_value(c.args, want.args)),
                   None)
        if hit is None:
            unmatched.append(want)
        else:
            left.remove(hit)
    if not unmatched:
        return Score("pass")
    want = unmatched[0]
    candidate = next((c for c in left if c.tool == want.tool), None)
    if candidate is None:
        return Score("wrong_tool", detail=f"called {left[0].tool!r}, {want.tool!r} was due")
    missing = sorted(set(want.args) - set(candidate.args))
    if missing:
        return Score("missing_args", path=f"$.args.{missing[0]}",
                     detail=f"{want.tool}: {missing[0]!r} is missing")
    extra = sorted(set(candidate.args) - set(want.args))
    if extra:
        return Score("extra_args", path=f"$.args.{extra[0]}",
                     detail=f"{want.tool}: {extra[0]!r} is not due")
    key = next(k for k in sorted(want.args) if not same_value(candidate.args[k], want.args[k]))
    return Score("wrong_args", path=f"$.args.{key}",
                 detail=f"{want.tool}: {key}={candidate.args[key]!r}, "
                        f"{want.args[key]!r} was due")

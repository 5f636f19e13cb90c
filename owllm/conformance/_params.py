"""Checks of request parameters that must be honoured or refused with a 400 naming them,
never silently ignored: ``stop``, ``max_tokens``, ``n``, ``logprobs``,
``stream_options.include_usage``, ``seed``, ``response_format``, and sampling values that
would make a sampler produce nan."""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from owllm.conformance._basic import CHAT, COMPLETIONS, chat
from owllm.conformance._core import Check, Outcome, Target, error_shape, verdict

STOP_PROMPT = [{"role": "user", "content": "Write a long sentence about the sea."}]
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["answer", "count"],
          "properties": {"answer": {"type": "string", "enum": ["yes", "no"]},
                         "count": {"type": "integer", "minimum": 0, "maximum": 9}}}


def _pick_stop(text: str) -> str | None:
    """A piece of ``text`` (3 characters, else 2, else 1) that first occurs past its start,
    with no whitespace at its ends and no U+FFFD (a byte token rendered half: servers differ
    there); one whose prefix has no U+FFFD either is preferred."""
    candidates = []
    for size in (3, 2, 1):
        for start in range(1, len(text) - size + 1):
            piece = text[start:start + size]
            if piece.strip() == piece and "\ufffd" not in piece and text.index(piece) > 0:
                candidates.append((("\ufffd" in text[:text.index(piece)]), -size, piece))
    return min(candidates)[2] if candidates else None


def _stop_excluded(t: Target) -> Outcome:
    full = chat(t, messages=STOP_PROMPT, temperature=0, max_tokens=16).choices[0].message.content
    stop = _pick_stop(full or "")
    if stop is None:
        return verdict(False, f"greedy text {full!r}", "a text long enough to stop in",
                       "the model's greedy answer is too short to pick a stop string")
    expected = full[:full.index(stop)]
    r = chat(t, messages=STOP_PROMPT, temperature=0, max_tokens=16, stop=[stop])
    got, finish = r.choices[0].message.content or "", r.choices[0].finish_reason
    ok = stop not in got and got == expected and finish == "stop"
    return verdict(ok, f"stop {stop!r}: {got!r}, finish_reason {finish!r}",
                   f"{expected!r} (the text before the stop string), finish_reason 'stop'")


def _max_tokens_exact(t: Target) -> Outcome:
    seen, bad = [], []
    for limit in (3, 5):
        r = chat(t, temperature=0, max_tokens=limit)
        used, finish = r.usage.completion_tokens, r.choices[0].finish_reason
        seen.append(f"{limit}->{used} ({finish})")
        if used > limit or (finish == "length" and used != limit) or (
                used < limit and finish != "stop"):
            bad.append(f"max_tokens {limit}: {used} tokens, finish_reason {finish!r}")
    return verdict(not bad, ", ".join(seen), "completion_tokens == max_tokens with "
                   "finish_reason 'length' (fewer only with 'stop')", "; ".join(bad))


def _n_two(t: Target) -> Outcome:
    r = chat(t, n=2, temperature=1.0, max_tokens=4)
    indexes = sorted(c.index for c in r.choices)
    return verdict(indexes == [0, 1], f"{len(r.choices)} choices, indexes {indexes}",
                   "2 choices (indexes 0 and 1), or a 400 naming n")


def _logprobs_chat(t: Target) -> Outcome:
    r = chat(t, temperature=0, max_tokens=4, logprobs=True, top_logprobs=2)
    content = (r.choices[0].logprobs.content or []) if r.choices[0].logprobs else []
    good = [e for e in content if e.logprob <= 0 and len(e.top_logprobs or []) == 2]
    ok = bool(content) and len(good) == len(content)
    return verdict(ok, f"{len(content)} token entries, {len(good)} with logprob <= 0 and "
                   "2 top_logprobs" if content else "logprobs null",
                   "choices[0].logprobs.content: one entry per token, 2 top_logprobs each "
                   "(or a 400 naming logprobs)")


def _logprobs_completions(t: Target) -> Outcome:
    r = t.client.completions.create(model=t.model, prompt="Once upon a time", max_tokens=4,
                                    temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    tokens = (lp.tokens or []) if lp else []
    tops = (lp.top_logprobs or []) if lp else []
    values = (lp.token_logprobs or []) if lp else []
    ok = (bool(tokens) and len(values) == len(tokens) == len(tops)
          and all(1 <= len(top or {}) <= 3 for top in tops))
    return verdict(ok, f"{len(tokens)} tokens, {len(values)} token_logprobs, top sizes "
                   f"{[len(top or {}) for top in tops]}" if lp else "logprobs null",
                   "logprobs.tokens/token_logprobs/top_logprobs per token, up to 2 "
                   "alternatives (or a 400 naming logprobs)")


def _usage_stream(t: Target) -> Outcome:
    chunks = list(chat(t, temperature=0, max_tokens=4, stream=True,
                       stream_options={"include_usage": True}))
    usages = [k.usage for k in chunks if getattr(k, "usage", None)]
    last = chunks[-1] if chunks else None
    ok = (len(usages) == 1 and last is not None and last.usage is not None
          and not last.choices and last.usage.completion_tokens >= 1
          and last.usage.prompt_tokens >= 1)
    return verdict(ok, f"{len(usages)} usage chunk(s); last chunk has "
                   f"{len(last.choices) if last else 0} choices, usage "
                   f"{last.usage if last else None}",
                   "a last chunk with empty choices and the usage (or a 400 naming "
                   "stream_options)")


def _seed(t: Target) -> Outcome:
    texts = [chat(t, temperature=1.0, max_tokens=12, seed=1234).choices[0].message.content
             for _ in range(2)]
    return verdict(texts[0] == texts[1], f"{texts[0]!r} vs {texts[1]!r}"[:200],
                   "the same seed at temperature 1 gives the same text (or a 400 naming "
                   "seed)")


SAMPLING_CASES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("top_p 1e-300", {"temperature": 1.0, "top_p": 1e-300}),
    ("temperature 1e-8", {"temperature": 1e-8}))


def _tiny_top_p(t: Target) -> Outcome:
    seen, bad = [], []
    prompts: dict[str, dict[str, Any]] = {
        CHAT: {"messages": [{"role": "user", "content": "Hi"}]}, COMPLETIONS: {"prompt": "Hi"}}
    for path, prompt in prompts.items():
        for label, sampling in SAMPLING_CASES:
            response = t.post(path, {"model": t.model, "max_tokens": 4, **sampling, **prompt})
            seen.append(f"{path.rsplit('/', 1)[-1]} {label}: {response.status_code}")
            if response.status_code == 200:
                continue
            named = "top_p" if "top_p" in sampling else "temperature"
            if response.status_code != 400 or named not in response.text or error_shape(
                    response):
                bad.append(f"{path} {label}: HTTP {response.status_code} "
                           f"{response.text[:100]!r}")
    return verdict(not bad, ", ".join(seen), "HTTP 200 (clamped) or a 400 naming the "
                   "parameter; never a 5xx", "; ".join(bad))


def _json_schema(t: Target) -> Outcome:
    r = chat(t, temperature=0, max_tokens=48,
             messages=[{"role": "user", "content": "Answer with JSON."}],
             response_format={"type": "json_schema", "json_schema": {
                 "name": "answer", "schema": SCHEMA, "strict": True}})
    text = r.choices[0].message.content or ""
    try:
        jsonschema.validate(json.loads(text), SCHEMA)
    except (ValueError, jsonschema.ValidationError) as exc:
        problem: Any = exc.message if isinstance(exc, jsonschema.ValidationError) else exc
        return verdict(False, f"{text[:100]!r}", "JSON valid against the schema",
                       f"not valid: {str(problem)[:120]}")
    return verdict(True, f"{text[:100]!r}", "JSON valid against the schema")


CHECKS = (
    Check("stop.excluded", "greedy chat, then again with stop=[a piece of its text]",
          "the text before the stop string (stop excluded), finish_reason 'stop'",
          _stop_excluded, ("stop",)),
    Check("max_tokens.exact", "chat, temperature 0, max_tokens 3 and 5",
          "completion_tokens == max_tokens, finish_reason 'length'", _max_tokens_exact),
    Check("n.two", "chat, n 2, temperature 1", "2 choices", _n_two, ("n",)),
    Check("logprobs.chat", "chat, logprobs true, top_logprobs 2",
          "logprobs.content per token with 2 top_logprobs", _logprobs_chat,
          ("logprobs", "top_logprobs")),
    Check("logprobs.completions", "completions, logprobs 2",
          "logprobs tokens, token_logprobs, top_logprobs", _logprobs_completions,
          ("logprobs",)),
    Check("usage.stream_include", "chat, stream, stream_options.include_usage true",
          "a final chunk with empty choices and usage", _usage_stream,
          ("stream_options", "include_usage")),
    Check("seed.repeatable", "the same chat twice, temperature 1, seed 1234",
          "identical texts", _seed, ("seed",)),
    Check("sampling.tiny_top_p_no_500", "chat and completions with top_p 1e-300; "
          "temperature 1e-8", "HTTP 200 or a 400 naming the parameter, never 5xx",
          _tiny_top_p),
    Check("json_schema.valid", "chat, response_format json_schema (strict, enum + integer)",
          "content is JSON valid against the schema", _json_schema, ("response_format",)),
)

"""Checks of the core API: models, chat, completions, streaming, greedy decoding, the
``model`` field, and the error answers (status, OpenAI shape, nothing leaked)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from owllm.conformance._core import (
    Check,
    Outcome,
    Target,
    error_shape,
    leaks,
    ok_json,
    verdict,
)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HELLO = [{"role": "user", "content": "Say hello."}]
NO_SUCH_MODEL = "owllm-conformance-no-such-model"
BODY_CAP = 16 << 20  # OWLLM's servers' default request cap; the check sends one byte over
FINISHES = ("stop", "length")


def chat(t: Target, **params: Any) -> Any:
    params.setdefault("messages", HELLO)
    params.setdefault("max_tokens", 8)
    return t.client.chat.completions.create(model=t.model, **params)


def _chat_basic(t: Target) -> Outcome:
    r = chat(t, temperature=0)
    choice = r.choices[0]
    usage = r.usage
    problems = [p for p, bad in (
        (f"object {r.object!r}", r.object != "chat.completion"),
        (f"role {choice.message.role!r}", choice.message.role != "assistant"),
        ("content not a string", not isinstance(choice.message.content, str)),
        (f"finish_reason {choice.finish_reason!r}", choice.finish_reason not in FINISHES),
        ("no usage", usage is None or not usage.prompt_tokens),
        ("usage over max_tokens", usage is not None and usage.completion_tokens > 8),
    ) if bad]
    return verdict(not problems, "; ".join(problems) or f"{len(r.choices)} choice, "
                   f"{usage.completion_tokens if usage else '?'} tokens",
                   "a chat.completion with an assistant message, finish_reason, usage",
                   ", ".join(problems))


def _chat_stream(t: Target) -> Outcome:
    chunks = list(chat(t, temperature=0, stream=True))
    finishes = [c.finish_reason for k in chunks for c in k.choices if c.finish_reason]
    objects = {k.object for k in chunks}
    text = "".join(c.delta.content or "" for k in chunks for c in k.choices)
    ok = objects == {"chat.completion.chunk"} and len(finishes) == 1 and finishes[0] in FINISHES
    return verdict(ok, f"{len(chunks)} chunks, objects {sorted(objects)}, finish_reasons "
                   f"{finishes}", "chat.completion.chunk deltas, one finish_reason at the end",
                   f"text {text[:60]!r}")


def _completions_basic(t: Target) -> Outcome:
    r = t.client.completions.create(model=t.model, prompt="Once upon a time", max_tokens=8,
                                    temperature=0)
    choice = r.choices[0]
    ok = (r.object == "text_completion" and isinstance(choice.text, str)
          and choice.finish_reason in FINISHES and r.usage is not None
          and r.usage.completion_tokens <= 8)
    return verdict(ok, f"object {r.object!r}, finish_reason {choice.finish_reason!r}, usage "
                   f"{r.usage.completion_tokens if r.usage else None}",
                   "a text_completion with text, finish_reason and usage (<= 8 tokens)",
                   f"text {choice.text[:60]!r}")


def _models_list(t: Target) -> Outcome:
    ids = [m.id for m in t.client.models.list().data]
    return verdict(t.model in ids, f"ids {ids[:5]}", f"the list holds {t.model!r}")


def _greedy_repeatable(t: Target) -> Outcome:
    texts = [chat(t, temperature=0, max_tokens=12).choices[0].message.content
             for _ in range(2)]
    return verdict(texts[0] == texts[1], f"{texts[0]!r} vs {texts[1]!r}"[:200],
                   "temperature 0 gives the same text twice")


def _model_is_id(t: Target) -> Outcome:
    named = chat(t, temperature=0, max_tokens=2).model
    response = t.post(CHAT, {"messages": HELLO, "max_tokens": 2, "temperature": 0})
    if response.status_code == 400:
        omitted = "400 (model required)"
        ok = named == t.model
    else:
        omitted = str(ok_json(response).get("model"))
        ok = named == t.model and omitted == t.model
    return verdict(ok, f"model {named!r}; without model in the request: {omitted!r}",
                   f"the served id {t.model!r} (never a file path)")


def _expect_400(t: Target, cases: dict[str, dict[str, Any] | bytes], status: int = 400,
                path: str = CHAT) -> Outcome:
    """Send each case; every answer must be ``status`` with an OpenAI error body."""
    seen, bad = [], []
    for label, body in cases.items():
        response = t.bad(path, body)
        shape = error_shape(response) if response.status_code >= 400 else None
        seen.append(f"{label}: {response.status_code}")
        if response.status_code != status:
            bad.append(f"{label}: HTTP {response.status_code} {response.text[:100]!r}")
        elif shape:
            bad.append(f"{label}: {shape}")
    return verdict(not bad, ", ".join(seen), f"HTTP {status} with an OpenAI error object",
                   "; ".join(bad))


def _unknown_model(t: Target) -> Outcome:
    return _expect_400(t, {"chat": {"model": NO_SUCH_MODEL, "messages": HELLO,
                                    "max_tokens": 2}}, status=404)


def _malformed_json(t: Target) -> Outcome:
    return _expect_400(t, {"truncated": b'{"model": "x", "messages": [',
                           "not json": b"hello"})


def _wrong_shape(t: Target) -> Outcome:
    return _expect_400(t, {
        "messages a string": {"model": t.model, "messages": "hello", "max_tokens": 2},
        "message without role": {"model": t.model, "messages": [{"content": "hi"}],
                                 "max_tokens": 2},
        "max_tokens a string": {"model": t.model, "messages": HELLO, "max_tokens": "many"}})


def _max_tokens_zero(t: Target) -> Outcome:
    base = {"model": t.model, "messages": HELLO}
    return _expect_400(t, {"0": {**base, "max_tokens": 0}, "-1": {**base, "max_tokens": -1},
                           "-1 streamed": {**base, "max_tokens": -1, "stream": True}})


def _no_traceback(t: Target) -> Outcome:
    bodies: dict[str, Any] = {
        "bad json": b'{"model": ', "wrong shape": {"model": t.model, "messages": 7},
        "tool_choice naming no tool": {"model": t.model, "messages": HELLO,
                                       "tool_choice": {"function": "f"}},
        "unknown role": {"model": t.model, "messages": [{"role": "wizard", "content": "x"}]},
        "content an object": {"model": t.model, "messages": [{"role": "user",
                                                              "content": {"a": 1}}]}}
    found = []
    for label, body in bodies.items():
        response = t.bad(CHAT, body)
        leak = leaks(response.text)
        if leak:
            found.append(f"{label} (HTTP {response.status_code}): {leak!r}")
    return verdict(not found, "; ".join(found) or f"{len(bodies)} bad requests, no leak",
                   "no traceback or server file path in any answer")


def _too_large(t: Target) -> Outcome:
    head = b'{"model": %s, "messages": [{"role": "user", "content": "' % json.dumps(
        t.model).encode()
    tail = b'"}]}'
    body = head + b"a" * (BODY_CAP + 1 - len(head) - len(tail)) + tail
    try:
        response = t.bad(CHAT, body)
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
        return verdict(False, f"connection dropped ({type(exc).__name__})",
                       "HTTP 413 (or a 400 naming the context length)",
                       "the endpoint closed the connection without an answer")
    shape = error_shape(response) if response.status_code >= 400 else "no error"
    ok = response.status_code in (413, 400) and shape is None
    return verdict(ok, f"HTTP {response.status_code} for {len(body)} bytes",
                   "HTTP 413 (or a 400 naming the context length), an OpenAI error object",
                   shape or "")


CHECKS = (
    Check("models.list", "GET /v1/models", "a model list holding the model's id",
          _models_list),
    Check("chat.basic", "chat, max_tokens 8, temperature 0",
          "chat.completion: assistant message, finish_reason stop|length, usage <= 8 tokens",
          _chat_basic),
    Check("chat.stream", "chat, stream: true", "chat.completion.chunk deltas, one "
          "finish_reason, [DONE]", _chat_stream),
    Check("completions.basic", "POST /v1/completions, max_tokens 8",
          "text_completion with text, finish_reason, usage", _completions_basic),
    Check("greedy.repeatable", "the same chat twice, temperature 0, 12 tokens",
          "identical texts", _greedy_repeatable),
    Check("response.model_is_id", "chat with model, and a raw body without it",
          "response model == the served id (or a 400 when model is omitted)", _model_is_id),
    Check("errors.unknown_model_404", f"chat with model {NO_SUCH_MODEL!r}",
          "HTTP 404 with an OpenAI error object", _unknown_model),
    Check("errors.malformed_json_400", "a truncated JSON body; a body that is not JSON",
          "HTTP 400 with an OpenAI error object", _malformed_json),
    Check("errors.wrong_shape_400", "messages as a string; a message without role; "
          "max_tokens as a string", "HTTP 400 with an OpenAI error object", _wrong_shape),
    Check("errors.no_traceback", "five malformed requests",
          "no traceback or server file path in any answer", _no_traceback),
    Check("errors.too_large_413", f"a {BODY_CAP + 1}-byte chat body",
          "HTTP 413 (or 400 naming the context length), never a 5xx or a dropped connection",
          _too_large),
)
# Run after every other check: a server that accepts max_tokens 0 or -1 may generate until
# its context is full, or forever (llama-cpp-python on main), and serve nothing else meanwhile.
LAST = (
    Check("errors.max_tokens_zero_400", "max_tokens 0; -1; -1 streamed",
          "HTTP 400 with an OpenAI error object", _max_tokens_zero),
)

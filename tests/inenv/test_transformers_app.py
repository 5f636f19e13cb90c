"""transformers_app (with transformers_engine) end to end: real servers on loopback, the demo
model, no mocks."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from owllm.envs.runner import inenv_argv
from tests.inenv.conftest import (
    SYSTEM_PROMPT,
    Server,
    launch,
    server_config,
)

HELLO = [{"role": "user", "content": "Hello! What is 42 * 17?"}]
SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "integer", "minimum": 0, "maximum": 999},
        "ok": {"type": "boolean"},
        "unit": {"enum": ["cm", "kg", "s"]},
        "note": {"type": "string", "maxLength": 8},
    },
    "required": ["answer", "ok", "unit", "note"],
    "additionalProperties": False,
}
CALC_TOOL = {"type": "function", "function": {
    "name": "calculator", "description": "Evaluate arithmetic.",
    "parameters": {"type": "object", "properties": {
        "op": {"enum": ["add", "mul"]}, "x": {"type": "integer", "minimum": 0, "maximum": 99}},
        "required": ["op", "x"], "additionalProperties": False}}}


def stream_events(server: Server, path: str, body: dict[str, Any]) -> list[Any]:
    """POST with stream=true; return the decoded `data:` payloads ("[DONE]" kept as a str)."""
    events: list[Any] = []
    with httpx.stream("POST", server.url(path), json={**body, "stream": True},
                      timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: "):]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def assert_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


# -- readiness and discovery ------------------------------------------------------------------

def test_health_after_ready(instruct_server: Server) -> None:
    response = httpx.get(instruct_server.url("/health"), timeout=5)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model": "tiny-chat"}
    # while it was loading, /health either refused the connection or answered 503
    assert set(instruct_server.statuses[:-1]) <= {None, 503}
    assert "owllm-server: ready" in instruct_server.log.read_text()


def test_models(instruct_server: Server) -> None:
    body = httpx.get(instruct_server.url("/v1/models"), timeout=5).json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["tiny-chat"]


# -- chat and completions ---------------------------------------------------------------------

def test_chat_prepends_configured_system_prompt(instruct_server: Server) -> None:
    implicit = instruct_server.chat(messages=HELLO, max_tokens=12, temperature=0)
    explicit = instruct_server.chat(
        messages=[{"role": "system", "content": SYSTEM_PROMPT}, *HELLO], max_tokens=12,
        temperature=0)
    other = instruct_server.chat(
        messages=[{"role": "system", "content": "Talk a lot."}, *HELLO], max_tokens=12,
        temperature=0)
    assert implicit["object"] == "chat.completion"
    assert implicit["choices"][0]["message"]["role"] == "assistant"
    # the configured prompt is used exactly when the request has none
    assert implicit["usage"]["prompt_tokens"] == explicit["usage"]["prompt_tokens"]
    assert implicit["choices"][0]["message"] == explicit["choices"][0]["message"]
    assert other["usage"]["prompt_tokens"] != implicit["usage"]["prompt_tokens"]


def test_chat_accepts_all_roles(instruct_server: Server) -> None:
    messages = [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "call it"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "calculator", "arguments": "{\"op\": \"add\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "3"},
        {"role": "user", "content": [{"type": "text", "text": "thanks"}]},
    ]
    body = instruct_server.chat(messages=messages, max_tokens=4)
    assert body["choices"][0]["finish_reason"] in ("stop", "length")


def test_base_completions_and_chat(base_server: Server) -> None:
    body = base_server.complete(prompt="Once upon a time", max_tokens=8, temperature=0)
    assert body["object"] == "text_completion"
    assert isinstance(body["choices"][0]["text"], str)
    assert body["usage"]["completion_tokens"] <= 8
    # a base model renders chat as a plain transcript, not through the chat template
    chat = base_server.chat(messages=HELLO, max_tokens=4)
    assert chat["choices"][0]["message"]["role"] == "assistant"


def test_stream_matches_non_stream(instruct_server: Server) -> None:
    body = {"messages": HELLO, "max_tokens": 24, "temperature": 0}
    whole = instruct_server.chat(**body)
    events = stream_events(instruct_server, "/v1/chat/completions",
                           {**body, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or ""
                   for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == whole["choices"][0]["finish_reason"]
    assert all(f is None for f in finishes[:-1])
    assert chunks[-1]["usage"] == whole["usage"]


def test_completion_stream(instruct_server: Server) -> None:
    body = {"prompt": "The quick brown fox", "max_tokens": 10, "temperature": 0}
    whole = instruct_server.complete(**body)
    events = stream_events(instruct_server, "/v1/completions", body)
    assert events[-1] == "[DONE]"
    text = "".join(c["choices"][0]["text"] for c in events[:-1] if c["choices"])
    assert text == whole["choices"][0]["text"]


def test_seed_determinism(instruct_server: Server) -> None:
    def sample(seed: int) -> str:
        body = instruct_server.complete(prompt="Hello", max_tokens=16, temperature=1.0,
                                        top_p=0.95, seed=seed)
        return str(body["choices"][0]["text"])

    assert sample(7) == sample(7)
    assert len({sample(7), sample(8), sample(9)}) > 1


def test_stop_string(instruct_server: Server) -> None:
    full = instruct_server.complete(prompt="Hello", max_tokens=24, temperature=0)
    text = full["choices"][0]["text"]
    assert len(text) > 6, text
    stop = text[4:6]
    cut = instruct_server.complete(prompt="Hello", max_tokens=24, temperature=0, stop=[stop])
    assert cut["choices"][0]["text"] == text[:text.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    single = instruct_server.complete(prompt="Hello", max_tokens=24, temperature=0, stop=stop)
    assert single["choices"][0]["text"] == cut["choices"][0]["text"]


def test_max_tokens_length_and_usage(instruct_server: Server, tokenizer_counts: Any) -> None:
    body = instruct_server.chat(messages=HELLO, max_tokens=5, temperature=0)
    assert body["choices"][0]["finish_reason"] == "length"
    newer = instruct_server.chat(messages=HELLO, max_completion_tokens=5, temperature=0)
    assert newer["choices"][0]["message"] == body["choices"][0]["message"]
    plain = instruct_server.complete(prompt="Once upon a time", max_tokens=5, temperature=0)
    counts = tokenizer_counts({
        "chats": {"chat": [{"role": "system", "content": SYSTEM_PROMPT}, *HELLO]},
        "texts": {"plain": "Once upon a time"}})
    for result, prompt_tokens in ((body, counts["chat"]), (plain, counts["plain"])):
        usage = result["usage"]
        assert usage["prompt_tokens"] == prompt_tokens
        assert usage["completion_tokens"] == 5
        assert usage["total_tokens"] == prompt_tokens + 5


# -- structured output and tools --------------------------------------------------------------

@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schema_enforced(instruct_server: Server, temperature: float) -> None:
    body = instruct_server.chat(
        messages=HELLO, max_tokens=120, temperature=temperature, seed=3,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "answer", "schema": SCHEMA}})
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMA)


def test_json_object_enforced(instruct_server: Server) -> None:
    body = instruct_server.chat(messages=HELLO, max_tokens=120, temperature=0,
                                response_format={"type": "json_object"})
    content = body["choices"][0]["message"]["content"]
    if body["choices"][0]["finish_reason"] == "stop":  # a free object may exceed the budget
        assert isinstance(json.loads(content), dict)
    else:
        assert content.startswith("{")


def test_tools_required_returns_tool_calls(instruct_server: Server) -> None:
    body = instruct_server.chat(messages=HELLO, tools=[CALC_TOOL], tool_choice="required",
                                max_tokens=80, temperature=0)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "calculator"
    jsonschema.validate(json.loads(call["function"]["arguments"]),
                        CALC_TOOL["function"]["parameters"])
    named = instruct_server.chat(
        messages=HELLO, tools=[CALC_TOOL], max_tokens=80,
        tool_choice={"type": "function", "function": {"name": "calculator"}})
    assert named["choices"][0]["finish_reason"] == "tool_calls"


OPEN_SCHEMA = {  # free strings, free extra keys: a random model could ramble in them forever
    "type": "object",
    "properties": {"name": {"type": "string"}, "tags": {"type": "array", "minItems": 1,
                                                        "items": {"type": "string"}},
                   "inner": {"type": "object", "properties": {"x": {"type": "boolean"}},
                             "required": ["x"]}},
    "required": ["name", "tags", "inner"],
}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_open_schema_closes_within_budget(instruct_server: Server, seed: int) -> None:
    body = instruct_server.chat(
        messages=HELLO, max_tokens=120, temperature=1.0, seed=seed,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "open", "schema": OPEN_SCHEMA}})
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    jsonschema.validate(json.loads(choice["message"]["content"]), OPEN_SCHEMA)


def test_stream_tool_calls(instruct_server: Server) -> None:
    """OpenAI's stream shape: per call, a first delta with index, id, type and name (empty
    arguments), then argument pieces with the index only, as they are generated (more than
    one piece); finish_reason tool_calls last."""
    body = {"messages": HELLO, "tools": [CALC_TOOL], "tool_choice": "required",
            "max_tokens": 80, "temperature": 0}
    whole = instruct_server.chat(**body)
    events = stream_events(instruct_server, "/v1/chat/completions", body)
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"
    deltas = [d for e in events[:-1] for d in e["choices"][0]["delta"].get("tool_calls", [])]
    joined: dict[int, dict[str, Any]] = {}
    for delta in deltas:
        if delta["index"] not in joined:
            assert delta["type"] == "function" and delta["function"]["arguments"] == ""
            joined[delta["index"]] = {"id": delta["id"], "type": "function", "function": {
                "name": delta["function"]["name"], "arguments": ""}}
        else:
            assert set(delta) == {"index", "function"}
            assert set(delta["function"]) == {"arguments"}  # the name is never repeated
            joined[delta["index"]]["function"]["arguments"] += delta["function"]["arguments"]
    # Streamed while generated: the id is the stream's own and the arguments the model's
    # own text; the calls are the same (names, argument values)
    expected = whole["choices"][0]["message"]["tool_calls"]
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in joined.values()] == [(c["function"]["name"],
                                           json.loads(c["function"]["arguments"]))
                                          for c in expected]
    ids = [c["id"] for c in joined.values()]
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == len(ids)
    assert not any(e["choices"][0]["delta"].get("content") for e in events[:-1])
    assert len(deltas) > len(joined) + 1  # arguments in several pieces


def test_tools_auto_renders_into_prompt(instruct_server: Server) -> None:
    plain = instruct_server.chat(messages=HELLO, max_tokens=4)
    with_tools = instruct_server.chat(messages=HELLO, tools=[CALC_TOOL], max_tokens=4)
    assert with_tools["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]
    assert with_tools["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")


# -- errors -----------------------------------------------------------------------------------

def test_bad_requests(instruct_server: Server) -> None:
    chat = "/v1/chat/completions"
    for field, value in (("n", 9), ("n", 0), ("max_tokens", 0), ("max_tokens", -1),
                         ("max_completion_tokens", 0), ("top_logprobs", 21)):
        error = assert_error(instruct_server.post(chat, {"messages": HELLO, field: value,
                                                         "logprobs": True}), 400)
        assert error["param"] == field, error
    error = assert_error(instruct_server.post(chat, {"messages": HELLO, "max_tokens": 100000}),
                         400)
    assert error["param"] == "max_tokens"
    assert_error(instruct_server.post(chat, {"messages": HELLO, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}}),
        400)
    assert_error(instruct_server.post(chat, {"messages": HELLO, "response_format": {
        "type": "xml"}}), 400)
    error = assert_error(instruct_server.post(chat, {"messages": HELLO, "response_format": {
        "type": "json_schema", "json_schema": {"schema": 3}}}), 400)
    assert error["param"] == "response_format"
    raw = httpx.post(instruct_server.url(chat), content=b"{not json",
                     headers={"content-type": "application/json"}, timeout=10)
    assert "not valid JSON" in assert_error(raw, 400)["message"]
    for messages in ([], "hello"):
        error = assert_error(instruct_server.post(chat, {"messages": messages}), 400)
        assert error["param"] == "messages"
    error = assert_error(instruct_server.post(chat, {"messages": HELLO, "model": "nope"}), 404)
    assert error["code"] == "model_not_found"
    assert_error(instruct_server.post(chat, {"prompt": "no messages"}), 400)
    error = assert_error(instruct_server.post(chat, {"messages": HELLO, "temperature": "hot"}),
                         400)
    assert error["param"] == "temperature"
    assert_error(instruct_server.post("/v1/completions", {"prompt": 3}), 400)
    assert_error(instruct_server.post(chat, {"messages": HELLO, "stop": list("abcde")}), 400)
    error = assert_error(instruct_server.post(chat, {"messages": HELLO,
                                                     "tool_choice": "required"}), 400)
    assert error["param"] == "tool_choice"
    bad_tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "string", "pattern": "(a|"}}}
    error = assert_error(instruct_server.post(chat, {"messages": HELLO, "tools": [bad_tool],
                                                     "tool_choice": "required"}), 400)
    assert error["param"] == "tools" and "response_format" not in error["message"]
    error = assert_error(instruct_server.post(chat, {"messages": [{"role": "robot",
                                                                   "content": "hi"}]}), 400)
    assert error["param"] == "messages.0.role"
    assert_error(httpx.get(instruct_server.url("/v1/nowhere"), timeout=5), 404)
    assert_error(httpx.get(instruct_server.url(chat), timeout=5), 405)
    # the configured id and an omitted model both work, and the server is still healthy
    assert instruct_server.chat(messages=HELLO, model="tiny-chat", max_tokens=2)
    assert httpx.get(instruct_server.url("/health"), timeout=5).status_code == 200


# -- the official client ----------------------------------------------------------------------

def test_openai_client(instruct_server: Server) -> None:
    client = openai.OpenAI(base_url=instruct_server.url("/v1"), api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny-chat"]
    chat = client.chat.completions.create(model="tiny-chat", messages=HELLO, max_tokens=8,
                                          temperature=0)
    assert chat.choices[0].finish_reason in ("stop", "length")
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny-chat", messages=HELLO, max_tokens=8, temperature=0, stream=True)
        if c.choices]
    assert "".join(pieces) == chat.choices[0].message.content
    done = client.completions.create(model="tiny-chat", prompt="Hello", max_tokens=4)
    assert done.usage is not None and done.usage.completion_tokens <= 4
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=HELLO)


# -- adapters, quantization, failures ---------------------------------------------------------

def test_lora_changes_output(instruct_server: Server, lora_server: Server) -> None:
    body = {"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0}
    assert lora_server.complete(**body)["choices"][0]["text"] != \
        instruct_server.complete(**body)["choices"][0]["text"]


def test_4bit_loads_and_generates(server_factory: Any, demo_model_dir: Path) -> None:
    server = server_factory("q4", server_config(demo_model_dir, "tiny-q4", use_4bit=True))
    body = server.complete(prompt="Hello", max_tokens=6, temperature=0)
    assert body["usage"]["completion_tokens"] >= 1


def test_missing_model_exits_fast(env_python: Path, tmp_path: Path) -> None:
    for key, value in (("model_path", str(tmp_path / "absent")),
                       ("adapter_dir", str(tmp_path))):
        config = server_config(tmp_path, "x")
        config.update({"model_path": str(tmp_path), key: value})
        (tmp_path / "config.json").write_text("{}")  # model_path "exists" for the adapter case
        cfg = tmp_path / "server.json"
        cfg.write_text(json.dumps(config))
        started = time.monotonic()
        result = subprocess.run(inenv_argv(env_python, "transformers_app", "--config-json",
                                           str(cfg), "--port", "1"),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode != 0
        assert key in result.stderr and value in result.stderr
        assert time.monotonic() - started < 5


def test_sigterm_exits_cleanly(env_python: Path, demo_model_dir: Path, tmp_path: Path) -> None:
    server = launch(env_python, server_config(demo_model_dir, "term"), tmp_path)
    server.wait_ready()
    assert server.stop() == 0

"""The llama.cpp server as users reach it: the shipped config's ``demo-llamacpp``, started by
the manager (shared with tests/backends/test_engines.py), checked with the official ``openai``
client.  Each check is a row of issue #15's llama.cpp column that llama-cpp-python's own
server got wrong."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from owllm.config import Config
from owllm.envs import EnvRegistry
from owllm.envs.runner import inenv_argv

pytestmark = [pytest.mark.slow]

TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "calculator", "description": "Evaluate arithmetic.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                   "required": ["expression"], "additionalProperties": False}}}]
HI: list[Any] = [{"role": "user", "content": "What is 42 * 17?"}]


@pytest.fixture(scope="module")
def served(owllm_config: Config, owllm_server_factory: Any) -> dict[str, Any]:
    model = next(m for m in owllm_config.models.values()
                 if m.backend == "llamacpp" and m.is_demo)
    row = owllm_server_factory(model.model_id)
    client = openai.OpenAI(base_url=row["url"] + "/v1", api_key="unused", max_retries=0,
                           timeout=120)
    return {"url": row["url"], "model": model.model_id, "client": client}


def test_forced_tool_calls_are_complete_calls(served: dict[str, Any]) -> None:
    client, model = served["client"], served["model"]
    for choice in ("required", {"type": "function", "function": {"name": "calculator"}}):
        answer = client.chat.completions.create(model=model, messages=HI, tools=TOOLS,
                                                tool_choice=choice, max_tokens=120)
        message = answer.choices[0].message
        assert answer.choices[0].finish_reason == "tool_calls", answer
        assert message.tool_calls and message.tool_calls[0].function.name == "calculator"
        assert set(json.loads(message.tool_calls[0].function.arguments)) == {"expression"}


def test_streamed_tool_calls_name_the_function_once(served: dict[str, Any]) -> None:
    stream = served["client"].chat.completions.create(
        model=served["model"], messages=HI, tools=TOOLS, tool_choice="required",
        max_tokens=120, stream=True, stream_options={"include_usage": True})
    names, arguments, finish, usage = [], "", None, None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or ():
                if call.function and call.function.name:
                    names.append(call.function.name)
                arguments += (call.function.arguments or "") if call.function else ""
    assert names == ["calculator"] and finish == "tool_calls"
    assert set(json.loads(arguments)) == {"expression"}
    assert usage is not None and 0 < usage.completion_tokens <= 120


def test_a_tool_result_goes_back_in(served: dict[str, Any]) -> None:
    messages = [*HI, {"role": "assistant", "content": None, "tool_calls": [{
        "id": "call_1", "type": "function",
        "function": {"name": "calculator", "arguments": "{\"expression\": \"42 * 17\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "714"}]
    answer = served["client"].chat.completions.create(model=served["model"], tools=TOOLS,
                                                      messages=messages, max_tokens=4)
    assert answer.usage is not None and answer.usage.prompt_tokens > 100


@pytest.mark.parametrize("max_tokens", [1, 3, 4, 5, 6])
def test_max_tokens_is_exact(served: dict[str, Any], max_tokens: int) -> None:
    answer = served["client"].completions.create(model=served["model"], max_tokens=max_tokens,
                                                 prompt="Once upon a time", temperature=0)
    assert answer.usage is not None
    assert (answer.usage.completion_tokens, answer.choices[0].finish_reason) == \
        (max_tokens, "length")


def test_stop_strings_are_not_in_the_text(served: dict[str, Any]) -> None:
    client, model = served["client"], served["model"]
    full = client.completions.create(model=model, prompt="Hello!", max_tokens=16,
                                     temperature=0).choices[0].text
    stop = full[6:8]
    assert len(stop) == 2, full
    cut = client.completions.create(model=model, prompt="Hello!", max_tokens=16,
                                    temperature=0, stop=[stop]).choices[0]
    assert cut.text == full[:full.index(stop)] and cut.finish_reason == "stop"


def test_usage_chunk_when_asked(served: dict[str, Any]) -> None:
    chunks = list(served["client"].chat.completions.create(
        model=served["model"], messages=HI, max_tokens=5, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])


def test_the_model_id_is_checked_and_answered(served: dict[str, Any]) -> None:
    with pytest.raises(openai.NotFoundError):
        served["client"].chat.completions.create(model="not-this-one", messages=HI)
    response = httpx.post(served["url"] + "/v1/chat/completions", timeout=60,
                          json={"messages": HI, "max_tokens": 2})
    assert response.status_code == 200 and response.json()["model"] == served["model"]


@pytest.mark.parametrize("body", [
    pytest.param(b"{not json", id="malformed"),
    pytest.param(b'{"messages": "hi"}', id="wrong-shape"),
    pytest.param(b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}',
                 id="max_tokens-0"),
    pytest.param(b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1, '
                 b'"stream": true}', id="max_tokens-negative-stream"),
])
def test_client_mistakes_are_4xx_json_without_paths(served: dict[str, Any],
                                                    body: bytes) -> None:
    response = httpx.post(served["url"] + "/v1/chat/completions", content=body, timeout=60,
                          headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert error["message"] and "/" not in error["message"] and "Traceback" not in response.text


def test_n_choices_and_logprobs(served: dict[str, Any]) -> None:
    client, model = served["client"], served["model"]
    answer = client.chat.completions.create(model=model, messages=HI, max_tokens=4, n=2,
                                            logprobs=True, top_logprobs=2)
    assert [c.index for c in answer.choices] == [0, 1]
    assert answer.usage is not None and answer.usage.completion_tokens == 8
    for choice in answer.choices:
        content = choice.logprobs.content if choice.logprobs else None
        assert content and len(content) == 4
        assert all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in content)
        assert all(e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob for e in content)
    text = client.completions.create(model=model, prompt="Once upon a time", max_tokens=3,
                                     logprobs=2, temperature=0).choices[0]
    assert text.logprobs is not None and len(text.logprobs.tokens or []) == 3
    assert all(len(top) == 2 for top in text.logprobs.top_logprobs or [])


def test_logprobs_under_a_constraint_are_json_numbers(served: dict[str, Any]) -> None:
    """A forced call's logprobs are the masked model's (``engine``): the tokens the grammar
    forbids are left out of top_logprobs, and nothing is -Infinity or NaN."""
    response = httpx.post(served["url"] + "/v1/chat/completions", timeout=120, json={
        "messages": HI, "tools": TOOLS, "tool_choice": "required", "max_tokens": 12,
        "temperature": 0, "logprobs": True, "top_logprobs": 20})
    assert response.status_code == 200, response.text
    assert "Infinity" not in response.text and "NaN" not in response.text
    content = response.json()["choices"][0]["logprobs"]["content"]
    assert len(content) == 12 and all(e["logprob"] <= 0 for e in content)
    assert any(len(e["top_logprobs"]) < 20 for e in content)  # forbidden ones left out
    for entry in content:  # a distribution over the allowed tokens only
        tops = [t["logprob"] for t in entry["top_logprobs"]]
        assert sum(math.exp(t) for t in tops) <= 1 + 1e-6
        assert len(tops) > 1 or entry["logprob"] == 0.0  # one allowed token: certain
    for entry in content[:6]:  # before the closing steer of the budget's end (engine)
        assert entry["top_logprobs"][0]["logprob"] == entry["logprob"]  # greedy


def test_sampling_never_breaks_and_seeds_repeat(served: dict[str, Any]) -> None:
    client, model = served["client"], served["model"]

    def text(**params: Any) -> str:
        return str(client.completions.create(model=model, prompt="Once upon a time",
                                             max_tokens=8, **params).choices[0].text)

    greedy = text(temperature=0)
    assert text(temperature=1, top_p=1e-300, seed=3) == greedy
    assert text(temperature=1, seed=11) == text(temperature=1, seed=11)
    assert text(temperature=2, seed=5) is not None


def test_unknown_server_args_stop_the_server(owllm_registry: EnvRegistry,
                                            tmp_path: Path) -> None:
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"model_id": "m", "model_path": str(tmp_path / "no.gguf")}))
    env = owllm_registry.ensure_env("llamacpp-cpu")
    done = subprocess.run(inenv_argv(env.python_executable, "llamacpp_server", "--config-json",
                                     str(config), "--port", "1", "--no_such_setting", "2"),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0 and "no_such_setting" in done.stderr
    assert "Traceback" not in done.stderr


def test_openapi_schema_driven_requests_never_5xx(served: dict[str, Any]) -> None:
    """openai_app's schema-driven check (tests/inenv/test_openai_app.py) on the llama.cpp
    engine: whatever the app's schema admits, and wrong values in its fields, is never a
    5xx (the engine's own failure modes: grammars, sampling, the KV cache)."""
    from hypothesis import HealthCheck, assume, given, settings
    from hypothesis import strategies as st

    from tests.inenv.test_openai_app import _bodies

    url = served["url"]
    schema = httpx.get(url + "/openapi.json", timeout=10).json()
    paths = {"ChatRequest": "/v1/chat/completions", "CompletionRequest": "/v1/completions"}
    seen: list[int] = []

    @settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(sorted(paths)).flatmap(
        lambda name: st.tuples(st.just(name), _bodies(schema, name))))
    def check(case: tuple[str, Any]) -> None:
        name, body = case
        try:  # the drawer's floats include inf/nan, which no JSON body can carry
            json.dumps(body, allow_nan=False)
        except ValueError:
            assume(False)
        if isinstance(body, dict) and isinstance(body.get("max_tokens"), int):
            body["max_tokens"] = min(body["max_tokens"], 16)  # bound the time, keep the edge
        response = httpx.post(url + paths[name], json=body, timeout=120)
        seen.append(response.status_code)
        assert response.status_code < 500, (body, response.text)
        assert "Traceback" not in response.text and "server_error" not in response.text

    check()
    assert httpx.get(url + "/health", timeout=5).status_code == 200
    assert 200 in seen and any(400 <= s < 500 for s in seen), seen


OVERRIDES = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location(
    "_owllm_inenv", sys.argv[1] + "/__init__.py", submodule_search_locations=[sys.argv[1]])
package = importlib.util.module_from_spec(spec)
sys.modules["_owllm_inenv"] = package
spec.loader.exec_module(package)
from _owllm_inenv.llamacpp_server import llama_overrides, server_args_to_settings
print(json.dumps(llama_overrides(server_args_to_settings(sys.argv[2:]))))
"""


def test_server_args_become_typed_llama_arguments(owllm_registry: EnvRegistry) -> None:
    from owllm.inenv import PACKAGE_DIR

    python = owllm_registry.ensure_env("llamacpp-cpu").python_executable

    def overrides(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(python), "-c", OVERRIDES, str(PACKAGE_DIR), *args],
                              capture_output=True, text=True, timeout=120, check=False)

    done = overrides("--n_threads", "2", "--n-batch=64", "--flash_attn", "false")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"n_threads": 2, "n_batch": 64, "flash_attn": False}
    bad = overrides("--n_threads", "many")
    assert bad.returncode != 0 and "n_threads" in bad.stderr and "Traceback" not in bad.stderr

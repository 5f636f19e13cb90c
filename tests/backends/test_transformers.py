"""The transformers backend (owllm/backends/transformers.py) behind the manager: what the
config maps to the server (system prompt, model type, adapter and 4-bit env, the demo model),
on real demo-model servers.  The server's own behaviour (sampling, stops, streaming, JSON
schemas, request errors) is tested in tests/inenv/test_transformers_app.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from owllm.envs import EnvRegistry
from owllm.envs.runner import run_in_env
from owllm.paths import Home
from owllm.servers.manager import LLMServerManager
from tests.inenv.conftest import CACHE_HOME

pytestmark = pytest.mark.slow

CONFIG = """
models:
  chat:
    base_model: demo://tiny-llama
    device: cpu
    system_prompt: "You are terse. You answer in exactly one word, always, no matter what."
  plain:
    base_model: demo://tiny-llama
    device: cpu
  base:
    base_model: demo://tiny-llama
    model_type: base
    device: cpu
  lora:
    base_model: demo://tiny-llama
    adapter_dir: LORA_DIR
    device: cpu
  q4:
    base_model: demo://tiny-llama
    use_4bit: true
    device: cpu
"""


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLMServerManager]:
    root = tmp_path_factory.mktemp("tf-backend")
    home = Home(root)
    demo, lora = root / "demo", root / "lora"
    config = root / "configs" / "llm_backends.yaml"
    config.parent.mkdir()
    config.write_text(CONFIG.replace("LORA_DIR", str(lora)))
    # The envs come from the tests' machine-wide cache home (built once per machine, like
    # tests/inenv's): building them is tests/envs' subject, this module's is what the config
    # maps to a server.  Servers, state and the demo weights stay in this module's home.
    envs = EnvRegistry(CACHE_HOME / "home", config_path=config, progress=False)
    peft_env = envs.ensure_env("torch-cpu-transformers-peft")
    run_in_env(peft_env.python_executable, "demo_model",
               ["--out", str(demo), "--lora-out", str(lora)], timeout=300)
    mgr = LLMServerManager(config, home=home, registry=envs)
    yield mgr
    mgr.stop_all()


@pytest.fixture(scope="module")
def chat(manager: LLMServerManager) -> str:
    return str(manager.start_server("chat")["url"])


def post(url: str, path: str, **body: Any) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=120)


def test_health_models_and_openai_client(chat: str) -> None:
    import openai

    assert httpx.get(chat + "/health").json() == {"status": "ok", "model": "chat"}
    assert [m["id"] for m in httpx.get(chat + "/v1/models").json()["data"]] == ["chat"]
    client = openai.OpenAI(base_url=chat + "/v1", api_key="none")
    answer = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
        temperature=0)
    assert answer.usage.completion_tokens <= 5 and answer.choices[0].message.role == "assistant"
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in
                       client.chat.completions.create(
                           model="chat", messages=[{"role": "user", "content": "hi"}],
                           max_tokens=5, temperature=0, stream=True) if chunk.choices)
    assert streamed == answer.choices[0].message.content
    text = client.completions.create(model="chat", prompt="Once", max_tokens=4, temperature=0)
    assert text.choices[0].finish_reason in ("length", "stop")


def test_usage_counts_and_finish_reason(chat: str, manager: LLMServerManager) -> None:
    plain = manager.start_server("plain")["url"]
    message = [{"role": "user", "content": "Count to ten."}]
    with_system = post(chat, "/v1/chat/completions", messages=message, max_tokens=6,
                       temperature=0).json()
    without = post(plain, "/v1/chat/completions", messages=message, max_tokens=6,
                   temperature=0).json()
    # the configured system prompt is in the prompt of `chat` only
    assert with_system["usage"]["prompt_tokens"] > without["usage"]["prompt_tokens"] + 10
    usage = with_system["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if usage["completion_tokens"] == 6:
        assert with_system["choices"][0]["finish_reason"] == "length"
    # an explicit system message replaces the configured one
    explicit = post(chat, "/v1/chat/completions", max_tokens=1, temperature=0,
                    messages=[{"role": "system", "content": "x"}, *message]).json()
    assert explicit["usage"]["prompt_tokens"] < usage["prompt_tokens"]


def test_tools_come_back_as_tool_calls(chat: str) -> None:
    from owllm.tools.prompts import tool_call_response_schema

    number = {"type": "integer", "minimum": 0, "maximum": 99}
    specs = [{"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": number, "b": number}, "required": ["a", "b"]}}}]
    answer = post(chat, "/v1/chat/completions", max_tokens=120, temperature=0, tools=specs,
                  messages=[{"role": "user", "content": "What is 2+2?"}],
                  response_format={"type": "json_schema", "json_schema": {
                      "name": "call", "schema": tool_call_response_schema(specs)}}).json()
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "add"
    assert set(json.loads(call["function"]["arguments"])) == {"a", "b"}


def test_base_model_uses_a_plain_prompt(manager: LLMServerManager) -> None:
    url = manager.start_server("base")["url"]
    answer = post(url, "/v1/completions", prompt="Once upon a time", max_tokens=4,
                  temperature=0).json()
    assert answer["object"] == "text_completion" and answer["usage"]["completion_tokens"] <= 4
    # a plain prompt: bos + the prompt's tokens, no chat template around it
    single = post(url, "/v1/completions", prompt="Once", max_tokens=1).json()
    assert single["usage"]["prompt_tokens"] <= 4


def test_lora_adapter_changes_the_output(manager: LLMServerManager, chat: str) -> None:
    lora = manager.start_server("lora")
    assert lora["env_key"] == "torch-cpu-transformers-peft"
    body = {"prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0}
    plain = manager.start_server("plain")["url"]
    assert post(lora["url"], "/v1/completions", **body).json()["choices"][0]["text"] != \
        post(plain, "/v1/completions", **body).json()["choices"][0]["text"]


def test_4bit_loads_and_generates(manager: LLMServerManager) -> None:
    row = manager.start_server("q4")
    assert row["env_key"] == "torch-cpu-transformers-bnb"
    answer = post(row["url"], "/v1/completions", prompt="Hello", max_tokens=3,
                  temperature=0).json()
    assert answer["usage"]["completion_tokens"] >= 1
    assert "4-bit" in manager.logs("q4", 200) or "bitsandbytes" in manager.logs("q4", 200) or \
        answer["usage"]["completion_tokens"] >= 1


def test_missing_weights_fail_fast_with_the_reason(manager: LLMServerManager,
                                                   tmp_path: Path) -> None:
    from owllm.errors import ServerError

    config = manager.config.path.parent / "broken.yaml"
    config.write_text(f"models:\n  broken:\n    base_model: {tmp_path / 'nothing'}\n"
                      "    device: cpu\n")
    broken = LLMServerManager(config, home=manager.home, registry=manager.registry)
    with pytest.raises(ServerError, match="exited with code 1"):
        broken.start_server("broken")
    assert str(tmp_path / "nothing") in broken.logs("broken")  # the log names what is missing

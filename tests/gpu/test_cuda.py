"""GPU checks: what OWLLM does on a real CUDA host (``gpu``-marked: they skip with a reason on
hosts without one, CI included; results are recorded in docs/gpu.md).

* Hardware detection through NVML, and the env key a CUDA model resolves to on this host.
* OWLLM's transformers server on the GPU: ``device``/``dtype`` auto choose cuda and
  bfloat16, and chat, streaming, ``json_schema`` and a forced tool call work; float32 greedy
  decoding on the GPU agrees with the CPU's; a 4-bit (bitsandbytes) model serves.

The server runs with ``$OWLLM_GPU_PYTHON`` when set (an interpreter with a CUDA torch and the
server's packages: transformers, sentencepiece, fastapi, uvicorn, pydantic, llguidance, and
bitsandbytes for the 4-bit check), else with the env OWLLM provisions for a CUDA model here
(which needs the package registries)::

    OWLLM_GPU_PYTHON=/path/to/python .venv/bin/python -m pytest -m gpu tests/gpu -n 0
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from owllm.config import ModelConfig
from owllm.envs.resolve import resolve_env_key
from owllm.envs.runner import run_in_env
from owllm.envs.spec import default_envs_path, load_envs_config
from owllm.hardware import detect_hardware
from tests.inenv.conftest import CACHE_HOME, Server, launch, server_config

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

PROMPTS = ("The capital of France is", "def fibonacci(n):", "1, 2, 3, 4,")


def cuda_model(**fields: Any) -> ModelConfig:
    return ModelConfig(model_id="gpu-demo", base_model="demo://tiny-llama", device="cuda",
                       **fields)


def test_nvml_reports_the_gpu_and_the_driver_cuda() -> None:
    os.environ.pop("OWLLM_HARDWARE", None)
    profile = detect_hardware()
    assert profile.has_cuda, profile.to_dict()
    assert profile.gpus and all(g.name and (g.memory_mb or 0) > 1024 for g in profile.gpus)
    major = int(str(profile.cuda_version).split(".")[0])
    assert major >= 11, profile.to_dict()


def test_a_cuda_model_resolves_to_the_newest_fitting_cuda_build() -> None:
    envs = load_envs_config(default_envs_path())
    profile = detect_hardware()
    plain = resolve_env_key(cuda_model(), profile, envs)
    four_bit = resolve_env_key(cuda_model(use_4bit=True), profile, envs)
    tag = plain.key.split("-")[1]
    assert plain.key == f"torch-{tag}-transformers" and tag.startswith("cu"), plain.to_dict()
    assert four_bit.key == f"torch-{tag}-transformers-bnb", four_bit.to_dict()
    assert any(f"→ {tag}" in rule for rule in plain.rules), plain.rules


@pytest.fixture(scope="module")
def gpu_python() -> Path:
    given = os.environ.get("OWLLM_GPU_PYTHON")
    if given:
        return Path(given)
    from owllm.envs import EnvRegistry

    key = resolve_env_key(cuda_model(use_4bit=True), detect_hardware(),
                          load_envs_config(default_envs_path())).key
    env = EnvRegistry(home=CACHE_HOME / "home").ensure_env(key)
    return Path(env.python_executable)


@pytest.fixture(scope="module")
def gpu_model(gpu_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpu-demo") / "model"
    run_in_env(gpu_python, "demo_model", ["--out", str(out), "--seed", "0"], timeout=600)
    return out


@pytest.fixture(scope="module")
def servers(gpu_python: Path, gpu_model: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """The demo model served three ways: cuda with auto dtype, cuda float32, cpu float32."""
    configs = {
        "auto": server_config(gpu_model, "gpu-auto", device="auto", dtype="auto"),
        "cuda32": server_config(gpu_model, "gpu-f32", device="cuda", dtype="float32"),
        "cpu32": server_config(gpu_model, "cpu-f32", device="cpu", dtype="float32"),
    }
    started = {name: launch(gpu_python, config, tmp_path_factory.mktemp(f"gpu-{name}"))
               for name, config in configs.items()}
    try:
        for server in started.values():
            server.wait_ready(timeout=300)
        yield started
    finally:
        for server in started.values():
            server.stop()


def test_auto_device_and_dtype_choose_cuda_and_bfloat16(servers: dict[str, Server]) -> None:
    log = servers["auto"].log.read_text()
    assert "on cuda (torch.bfloat16)" in log, log[-2000:]
    assert "on cuda (torch.float32)" in servers["cuda32"].log.read_text()


def test_chat_stream_schema_and_forced_tool_call_on_the_gpu(
        servers: dict[str, Server]) -> None:
    server = servers["auto"]
    reply = server.chat(messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    assert reply["choices"][0]["message"]["role"] == "assistant"
    assert 1 <= reply["usage"]["completion_tokens"] <= 8
    events = server.post("/v1/chat/completions", {
        "messages": [{"role": "user", "content": "count"}], "max_tokens": 8, "stream": True})
    lines = [ln for ln in events.text.splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and len(lines) >= 3, events.text[:500]
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
              "required": ["city"], "additionalProperties": False}
    shaped = server.chat(messages=[{"role": "user", "content": "a city"}], max_tokens=48,
                         response_format={"type": "json_schema",
                                          "json_schema": {"name": "c", "schema": schema}})
    value = json.loads(shaped["choices"][0]["message"]["content"])
    assert set(value) == {"city"} and isinstance(value["city"], str)
    tool = {"type": "function", "function": {
        "name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
            "required": ["city"], "additionalProperties": False}}}
    called = server.chat(messages=[{"role": "user", "content": "weather in Paris?"}],
                         tools=[tool], tool_choice="required", max_tokens=64)
    choice = called["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    call = choice["message"]["tool_calls"][0]["function"]
    assert call["name"] == "get_weather" and "city" in json.loads(call["arguments"])


def test_float32_greedy_on_the_gpu_matches_the_cpu(servers: dict[str, Server]) -> None:
    for prompt in PROMPTS:
        texts = {}
        for name in ("cuda32", "cpu32"):
            body = servers[name].complete(prompt=prompt, max_tokens=16, temperature=0)
            texts[name] = body["choices"][0]["text"]
        assert texts["cuda32"] == texts["cpu32"], (prompt, texts)


def test_a_4bit_model_serves_on_the_gpu(gpu_python: Path, gpu_model: Path,
                                        tmp_path: Path) -> None:
    has_bnb = subprocess.run([str(gpu_python), "-c", "import bitsandbytes"],
                             capture_output=True).returncode == 0
    if not has_bnb:
        pytest.skip(f"bitsandbytes is not importable by {gpu_python}")
    server = launch(gpu_python, server_config(gpu_model, "gpu-4bit", device="cuda",
                                              dtype="auto", use_4bit=True), tmp_path)
    try:
        server.wait_ready(timeout=300)
        reply = server.chat(messages=[{"role": "user", "content": "hi"}], max_tokens=8)
        assert reply["usage"]["completion_tokens"] >= 1
        assert "on cuda" in server.log.read_text()
    finally:
        server.stop()

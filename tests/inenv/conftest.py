"""Fixtures for the in-env modules' tests: a real env, the demo model, real servers.

Everything runs as real processes: the env is provisioned through ``EnvRegistry`` into a
per-machine cache (fast after the first build), the demo model is built by our builder in the
session's tmp dir, and each server is a subprocess on a free loopback port, in its own
process group, torn down (SIGTERM, then SIGKILL to the group) at the end of the session.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from owllm.backends._common import thread_budget
from owllm.backends.transformers import omp_thread_vars
from owllm.envs import EnvRegistry
from owllm.envs.runner import inenv_argv, run_in_env
from tests.procs import die_with_parent

# One env with every optional feature, so LoRA and 4-bit run in the same interpreter.
ENV_KEY = "torch-cpu-transformers-bnb-peft"
# What transformers_app (with its engine) and demo_model import, by distribution name; the env under
# ENV_KEY must hold all of them (test_env_has_the_server_packages).  torch is the CPU build
# pinned to 2.13.0 from the local wheel folder; llguidance does the constrained decoding.
TRANSFORMERS_ENV_PACKAGES = (
    "torch", "transformers", "tokenizers", "safetensors", "sentencepiece", "jinja2",
    "fastapi", "uvicorn", "pydantic", "llguidance", "accelerate", "peft", "bitsandbytes",
)
CACHE_HOME = Path(os.environ.get("OWLLM_TEST_CACHE", Path.home() / ".cache" / "owllm-tests"))
SYSTEM_PROMPT = "You are terse. You answer in exactly one word, always."
READY_TIMEOUT = 180.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """One running transformers_app process."""

    process: subprocess.Popen[bytes]
    base_url: str
    model_id: str
    log: Path
    statuses: list[int | None] = field(default_factory=list)  # /health answers while waiting
    ready_seconds: float = 0.0

    def url(self, path: str) -> str:
        return self.base_url + path

    def post(self, path: str, body: Any, timeout: float = 120.0) -> httpx.Response:
        return httpx.post(self.url(path), json=body, timeout=timeout)

    def chat(self, **body: Any) -> dict[str, Any]:
        response = self.post("/v1/chat/completions", body)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def complete(self, **body: Any) -> dict[str, Any]:
        response = self.post("/v1/completions", body)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}:\n"
                                   f"{self.log.read_text()[-3000:]}")
            try:
                status: int | None = httpx.get(self.url("/health"), timeout=2).status_code
            except httpx.HTTPError:
                status = None
            if not self.statuses or self.statuses[-1] != status:
                self.statuses.append(status)
            if status == 200:
                self.ready_seconds = time.monotonic() - started
                return
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"server not healthy in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> int | None:
        """SIGTERM the process (clean exit expected), then make sure its group is gone."""
        code: int | None = None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.process.wait(timeout=15)
        else:
            code = self.process.returncode
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        return code


def launch(python: Path, config: dict[str, Any], workdir: Path) -> Server:
    """Start a server subprocess (not yet waited on)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "config.json"
    config_file.write_text(json.dumps(config))
    port = free_port()
    log = workdir / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            inenv_argv(python, "transformers_app", "--config-json", str(config_file),
                       "--host", "127.0.0.1", "--port", str(port)),
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **thread_vars()},
        )
    return Server(process, f"http://127.0.0.1:{port}", config["model_id"], log)


def thread_vars() -> dict[str, str]:
    """The run's thread budget for a CPU server (as the transformers backend gives it)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return {}
    budget = thread_budget()
    return {} if budget is None else omp_thread_vars(int(budget.value))


def server_config(model_dir: Path, model_id: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model_id": model_id, "model_path": str(model_dir), "model_type": "instruct",
        "system_prompt": "", "adapter_dir": None, "use_4bit": False, "device": "cpu",
        "dtype": "float32", "generation": {"max_tokens": 32, "temperature": 0.0, "top_p": 1.0},
        "max_model_len": 512,
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="session")
def transformers_env() -> Any:
    return EnvRegistry(home=CACHE_HOME / "home").ensure_env(ENV_KEY)


@pytest.fixture(scope="session")
def transformers_python(transformers_env: Any) -> Path:
    """The python of a provisioned env holding TRANSFORMERS_ENV_PACKAGES (cached per machine)."""
    return Path(transformers_env.python_executable)


@pytest.fixture(scope="session")
def env_python(transformers_python: Path) -> Path:
    return transformers_python


@pytest.fixture(scope="session")
def built_models(env_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("demo")
    info = run_in_env(env_python, "demo_model", ["--out", str(root / "model"), "--seed", "0",
                                                 "--lora-out", str(root / "lora")], timeout=300)
    return {"model": root / "model", "lora": root / "lora", "info": info}


@pytest.fixture(scope="session")
def demo_model_dir(built_models: dict[str, Any]) -> Path:
    return Path(built_models["model"])


@pytest.fixture(scope="session")
def lora_dir(built_models: dict[str, Any]) -> Path:
    return Path(built_models["lora"])


@pytest.fixture(scope="session")
def server_factory(env_python: Path, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[Any]:
    """Start servers by name, once per session; all are stopped at the end."""
    started: dict[str, Server] = {}

    def start(name: str, config: dict[str, Any]) -> Server:
        if name not in started:
            server = launch(env_python, config, tmp_path_factory.mktemp(f"srv-{name}"))
            started[name] = server
            server.wait_ready()
        return started[name]

    yield start
    for server in started.values():
        server.stop()


@pytest.fixture(scope="session")
def instruct_server(server_factory: Any, demo_model_dir: Path) -> Server:
    return server_factory("instruct", server_config(demo_model_dir, "tiny-chat",
                                                    system_prompt=SYSTEM_PROMPT))


@pytest.fixture(scope="session")
def base_server(server_factory: Any, demo_model_dir: Path) -> Server:
    return server_factory("base", server_config(demo_model_dir, "tiny-base", model_type="base"))


@pytest.fixture(scope="session")
def lora_server(server_factory: Any, demo_model_dir: Path, lora_dir: Path) -> Server:
    return server_factory("lora", server_config(demo_model_dir, "tiny-lora",
                                                adapter_dir=str(lora_dir)))


@pytest.fixture(scope="session")
def tokenizer_counts(env_python: Path, demo_model_dir: Path) -> Any:
    """Count tokens with the model's own tokenizer, in the env's interpreter."""

    def count(payload: dict[str, Any]) -> dict[str, int]:
        script = (
            "import json,sys\n"
            "from transformers import AutoTokenizer\n"
            f"tok = AutoTokenizer.from_pretrained({str(demo_model_dir)!r})\n"
            "p = json.loads(sys.stdin.read())\n"
            "out = {}\n"
            "for k, msgs in p.get('chats', {}).items():\n"
            "    s = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)\n"
            "    out[k] = len(tok(s, add_special_tokens=False).input_ids)\n"
            "for k, text in p.get('texts', {}).items():\n"
            "    out[k] = len(tok(text).input_ids)\n"
            "print(json.dumps(out))\n")
        result = subprocess.run([str(env_python), "-c", script], input=json.dumps(payload),
                                capture_output=True, text=True, check=True, timeout=120)
        return dict(json.loads(result.stdout.strip().splitlines()[-1]))

    return count


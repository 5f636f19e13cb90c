"""Supervision tests: real processes, real ports, a real StateStore.  The model server is a
small stdlib HTTP server (stub_server.py) and the env is this interpreter, so these tests
exercise the manager alone; tests/backends covers the real transformers server."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from owllm.backends import Capabilities, LaunchSpec
from owllm.envs import EnvSpec
from owllm.servers.manager import LLMServerManager

STUB = Path(__file__).with_name("stub_server.py")


class StubBackend:
    """Launches stub_server.py; the model's ``server_args`` pick its behaviour."""

    name = "transformers"
    capabilities = Capabilities()
    ready_needs_completion = False

    def model_path(self, model: Any, ctx: Any) -> str:
        return model.base_model

    def launch(self, model: Any, model_path: Any, ctx: Any, host: str, port: int) -> LaunchSpec:
        return LaunchSpec(argv=(sys.executable, str(STUB), "--host", host, "--port", str(port),
                                *model.server_args),
                          ready_needs_completion=self.ready_needs_completion)


class ThisPython:
    """Stands in for EnvRegistry: every model runs on the test interpreter."""

    progress = False

    def get_env_for_model(self, model: Any) -> EnvSpec:
        return EnvSpec(key="system-python", path=Path(sys.prefix),
                       python_executable=Path(sys.executable))


CONFIG = """
models:
  ok: {base_model: stub, port: PORT_HINT}
  ok2: {base_model: stub}
  ok3: {base_model: stub}
  ok4: {base_model: stub}
  slow: {base_model: stub, server_args: ["--mode", "slow", "--delay", "1.5"]}
  crashes: {base_model: stub, server_args: ["--mode", "exit"]}
  stalls: {base_model: stub, server_args: ["--mode", "stall"], stall_timeout_s: 1.5}
  never: {base_model: stub, server_args: ["--mode", "slow", "--delay", "60"],
          startup_timeout_s: 2}
  tree: {base_model: stub, server_args: ["--children"]}
  lying: {base_model: stub, server_args: ["--mode", "lying"], startup_timeout_s: 3}
"""


def make_config(tmp_path: Path, port_hint: int = 10599) -> Path:
    path = tmp_path / "configs" / "llm_backends.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CONFIG.replace("PORT_HINT", str(port_hint)))
    return path


def make_manager(config: Path) -> LLMServerManager:
    return LLMServerManager(config, registry=ThisPython())  # type: ignore[arg-type]


@pytest.fixture
def stub_backend(monkeypatch: pytest.MonkeyPatch) -> StubBackend:
    backend = StubBackend()
    monkeypatch.setattr("owllm.servers.manager.get_backend", lambda name: backend)
    return backend


@pytest.fixture
def manager(tmp_path: Path, tmp_home: Path, stub_backend: StubBackend):  # type: ignore[no-untyped-def]
    mgr = make_manager(make_config(tmp_path))
    yield mgr
    mgr.stop_all()

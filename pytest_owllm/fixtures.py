"""Default fixtures.  Servers are started once per test run and shared by all xdist workers:
the first worker starts a model's server under a FileLock in the run's shared temp folder,
the others attach through the StateStore.  The run's controller stops what the run started
(unless ``--owllm-keep-servers``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from owllm.config import Config
from owllm.envs import EnvRegistry, EnvSpec
from owllm.paths import Home, resolve_home
from owllm.servers.manager import LLMServerManager
from owllm.servers.ports import LIVE_STATUSES

STARTED_FILE = "owllm-started-servers.jsonl"

__all__ = ["owllm_config", "owllm_env", "owllm_home", "owllm_manager", "owllm_registry",
           "owllm_server", "owllm_server_factory", "owllm_settings", "owllm_tool_server"]


def shared_dir(request: pytest.FixtureRequest) -> Path:
    """The run's temp folder that every xdist worker (and the controller) can see."""
    base = Path(str(request.config._tmp_path_factory.getbasetemp()))  # type: ignore[attr-defined]
    return base.parent if hasattr(request.config, "workerinput") else base


def _plugin(request: pytest.FixtureRequest) -> Any:
    from pytest_owllm.plugin import get_plugin

    return get_plugin(request.config)


@pytest.fixture(scope="session")
def owllm_settings(request: pytest.FixtureRequest) -> Any:
    """The resolved plugin settings (config path, selected models, home, keep_servers)."""
    return _plugin(request).settings


@pytest.fixture(scope="session")
def owllm_config(request: pytest.FixtureRequest) -> Config:
    """The validated model config."""
    config: Config = _plugin(request).config
    return config


@pytest.fixture(scope="session")
def owllm_home(owllm_settings: Any, owllm_config: Config) -> Home:
    return resolve_home(owllm_settings.home, owllm_config.path).ensure()


@pytest.fixture(scope="session")
def owllm_registry(owllm_home: Home, owllm_config: Config) -> EnvRegistry:
    return EnvRegistry(owllm_home, config_path=owllm_config.path, progress=False)


@pytest.fixture(scope="session")
def owllm_manager(owllm_config: Config, owllm_home: Home,
                  owllm_registry: EnvRegistry) -> LLMServerManager:
    return LLMServerManager(owllm_config, home=owllm_home, registry=owllm_registry)


@pytest.fixture(scope="session")
def owllm_env(owllm_registry: EnvRegistry) -> Callable[[str], EnvSpec]:
    """``owllm_env(key)`` → the READY env (built once per run, even with ``-n 4``)."""
    return lambda key: owllm_registry.ensure_env(key)


@pytest.fixture(scope="session")
def owllm_server_factory(request: pytest.FixtureRequest,
                         owllm_manager: LLMServerManager) -> Callable[[str], dict[str, Any]]:
    """``factory(model_id)`` → the RUNNING server's StateStore row, started once per run."""
    shared = shared_dir(request)

    def start(model_id: str) -> dict[str, Any]:
        with FileLock(str(shared / f"owllm-server-{model_id}.lock")):
            row = owllm_manager.reconcile(model_id)
            if row and row["status"] == "RUNNING" and row.get("healthy"):
                return row
            row = owllm_manager.start_server(model_id)
            with open(shared / STARTED_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"model_id": model_id,
                                         "config": str(owllm_manager.config.path),
                                         "home": str(owllm_manager.home.root)}) + "\n")
            return row

    return start


@pytest.fixture(scope="session")
def owllm_server(owllm_server_factory: Callable[[str], dict[str, Any]],
                 owllm_model_id: str) -> dict[str, Any]:
    """The running server of the parametrized ``owllm_model_id``."""
    return owllm_server_factory(owllm_model_id)


@pytest.fixture(scope="session")
def owllm_tool_server(request: pytest.FixtureRequest, owllm_home: Home,
                      owllm_config: Config) -> dict[str, Any]:
    """The tool server (url, pid), started once per run like the model servers."""
    from owllm.tools.manage import start_tool_server

    shared = shared_dir(request)
    with FileLock(str(shared / "owllm-tool-server.lock")):
        row: dict[str, Any] = start_tool_server(owllm_home, config=owllm_config, port=0)
        marker = shared / "owllm-tool-server.started"
        if not marker.exists():
            marker.write_text(str(owllm_home.root), encoding="utf-8")
    return row


def stop_started_servers(shared: Path) -> None:
    """Stop every server this run started (called once, by the controller)."""
    started = shared / STARTED_FILE
    if started.exists():
        seen = set()
        for line in started.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            key = (entry["model_id"], entry["home"])
            if key in seen:
                continue
            seen.add(key)
            manager = LLMServerManager(entry["config"], home=Home(Path(entry["home"])))
            row = manager.store.get_server(entry["model_id"])
            if row and row["status"] in LIVE_STATUSES:
                manager.stop_server(entry["model_id"])
    marker = shared / "owllm-tool-server.started"
    if marker.exists():
        from owllm.tools.manage import stop_tool_server

        stop_tool_server(Home(Path(marker.read_text(encoding="utf-8"))))

"""Default fixtures.  Servers are started once per test run and shared by all xdist workers:
the first worker starts a model's server under a FileLock in the run's shared temp folder,
the others attach through the StateStore.

The run owns what it starts (:mod:`owllm.servers.reaper`): every server a process of the run
launches is recorded as the run's before the launch, and the controller (or the only
process) stops them when the run ends, unless ``--owllm-keep-servers`` hands them over.  If
the controller dies first (``kill -9``, a cancelled CI job), its watchdog stops them.  A
server that was already running when the run wanted it is reused, never stopped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from owllm.config import Config
from owllm.envs import EnvRegistry, EnvSpec
from owllm.paths import Home, resolve_home
from owllm.servers.manager import LLMServerManager
from owllm.servers.reaper import LEDGER, Owner, start_owned_tool_server
from owllm.state_store import ServerStatus

RUN_KEY = pytest.StashKey[Owner]()
RUN_INPUT = "owllm_run"  # the run's owner in an xdist worker's workerinput
REAPER_LOG = "owllm-reaper.log"

__all__ = ["owllm_config", "owllm_env", "owllm_home", "owllm_manager", "owllm_registry",
           "owllm_server", "owllm_server_factory", "owllm_settings", "owllm_tool_server"]


def shared_dir(request: pytest.FixtureRequest) -> Path:
    """The run's temp folder that every xdist worker (and the controller) can see."""
    base = Path(str(request.config._tmp_path_factory.getbasetemp()))  # type: ignore[attr-defined]
    return base.parent if hasattr(request.config, "workerinput") else base


def _plugin(request: pytest.FixtureRequest) -> Any:
    from pytest_owllm.plugin import get_plugin

    return get_plugin(request.config)


def run_owner(config: pytest.Config) -> Owner:
    """The run's owner as this process sees it: in the controller (or the only process) the
    run itself, with its watchdog; in an xdist worker the controller's, whose watchdog learns
    the worker's homes through the ledger in the run's shared folder."""
    owner = config.stash.get(RUN_KEY, None)
    if owner is None:
        data = getattr(config, "workerinput", {}).get(RUN_INPUT)
        if data:
            owner = Owner.from_dict(data)
        else:
            from pytest_owllm.plugin import get_plugin

            base = Path(str(config._tmp_path_factory.getbasetemp()))  # type: ignore[attr-defined]
            owner = Owner.new("pytest", keep=get_plugin(config).settings.keep_servers,
                              ledger=base / LEDGER, log=base / REAPER_LOG)
        config.stash[RUN_KEY] = owner
    return owner


def end_run(config: pytest.Config) -> None:
    """The run ends (controller or only process): stop what it owns, release its watchdog."""
    owner = config.stash.get(RUN_KEY, None)
    if owner is None or not owner.in_owning_process:
        return
    del config.stash[RUN_KEY]
    owner.end()


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
def owllm_manager(request: pytest.FixtureRequest, owllm_config: Config, owllm_home: Home,
                  owllm_registry: EnvRegistry) -> LLMServerManager:
    """The run's manager: what it launches belongs to the run (see the module docstring)."""
    manager = LLMServerManager(owllm_config, home=owllm_home, registry=owllm_registry)
    manager.owner = run_owner(request.config)
    return manager


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
            if row and row["status"] == ServerStatus.RUNNING and row.get("healthy"):
                return row
            return owllm_manager.start_server(model_id)  # owned by the run from its launch

    return start


@pytest.fixture(scope="session")
def owllm_server(owllm_server_factory: Callable[[str], dict[str, Any]],
                 owllm_model_id: str) -> dict[str, Any]:
    """The running server of the parametrized ``owllm_model_id``."""
    return owllm_server_factory(owllm_model_id)


@pytest.fixture(scope="session")
def owllm_tool_server(request: pytest.FixtureRequest, owllm_home: Home,
                      owllm_config: Config) -> dict[str, Any]:
    """The tool server (url, pid), started once per run like the model servers (and owned by
    the run the same way)."""
    shared = shared_dir(request)
    with FileLock(str(shared / "owllm-tool-server.lock")):
        return start_owned_tool_server(run_owner(request.config), owllm_home,
                                       config=owllm_config, port=0)

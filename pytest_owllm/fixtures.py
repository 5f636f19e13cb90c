"""Default fixtures.  Servers are started once per test run and shared by all xdist workers:
the first worker starts a model's server under a FileLock in the run's shared temp folder,
the others attach through the StateStore.

What the run starts it owns (:mod:`pytest_owllm.run`): stopped when the run ends unless
``--owllm-keep-servers`` hands it over; a server that was already running when the run
wanted it is reused, never stopped.  The same fixtures for another config or home come from
the factories of :mod:`pytest_owllm.factories`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from owllm.backends._common import SERVERS_VAR
from owllm.config import Config
from owllm.envs import EnvRegistry, EnvSpec
from owllm.paths import Home, resolve_home
from owllm.servers.manager import LLMServerManager
from pytest_owllm.factories import owllm_server_proc, owllm_tool_server_proc, start_shared
from pytest_owllm.run import get_run, run_owner
from pytest_owllm.settings import OwllmSettings

__all__ = ["owllm_config", "owllm_env", "owllm_home", "owllm_manager", "owllm_registry",
           "owllm_server", "owllm_server_factory", "owllm_settings", "owllm_tool_server"]


@pytest.fixture(scope="session")
def owllm_settings(request: pytest.FixtureRequest) -> OwllmSettings:
    """The resolved plugin settings (config path, selected models, home, keep_servers)."""
    return get_run(request.config).settings


@pytest.fixture(scope="session")
def owllm_config(request: pytest.FixtureRequest) -> Config:
    """The validated model config."""
    return get_run(request.config).config


@pytest.fixture(scope="session")
def owllm_home(owllm_settings: OwllmSettings, owllm_config: Config) -> Home:
    return resolve_home(owllm_settings.home, owllm_config.path).ensure()


@pytest.fixture(scope="session")
def owllm_registry(owllm_home: Home, owllm_config: Config) -> EnvRegistry:
    return EnvRegistry(owllm_home, config_path=owllm_config.path, progress=False)


@pytest.fixture(scope="session")
def owllm_manager(request: pytest.FixtureRequest, owllm_config: Config, owllm_home: Home,
                  owllm_registry: EnvRegistry) -> Iterator[LLMServerManager]:
    """The run's manager: what it launches belongs to the run (see the module docstring).

    While the run lasts, its CPU servers share the host's cores: ``$OWLLM_CPU_SERVERS`` is
    how many of them compute at once (its CPU models, at most one per xdist worker: a
    serial run drives one server at a time), unless already set (by the user, or by whoever
    runs this run), and each backend gives its servers that share of threads
    (:func:`owllm.backends._common.thread_budget`)."""
    manager = LLMServerManager(owllm_config, home=owllm_home, registry=owllm_registry)
    manager.owner = run_owner(request.config)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    with _servers_var(min(get_run(request.config).cpu_servers(), workers)):
        yield manager


@contextlib.contextmanager
def _servers_var(count: int) -> Iterator[None]:
    if SERVERS_VAR in os.environ or count < 2:
        yield
        return
    os.environ[SERVERS_VAR] = str(count)
    try:
        yield
    finally:  # an in-process pytester run must not leave it in the outer run
        os.environ.pop(SERVERS_VAR, None)


@pytest.fixture(scope="session")
def owllm_env(owllm_registry: EnvRegistry) -> Callable[[str], EnvSpec]:
    """``owllm_env(key)`` → the READY env (built once per run, even with ``-n 4``)."""
    return lambda key: owllm_registry.ensure_env(key)


@pytest.fixture(scope="session")
def owllm_server_factory(request: pytest.FixtureRequest,
                         owllm_manager: LLMServerManager) -> Callable[[str], dict[str, Any]]:
    """``factory(model_id)`` → the RUNNING server's StateStore row, started once per run."""
    return lambda model_id: start_shared(request, owllm_manager, model_id)


# The running server of the parametrized ``owllm_model_id``.
owllm_server = owllm_server_proc()
# The tool server (url, pid), started once per run like the model servers (and owned by the
# run the same way).
owllm_tool_server = owllm_tool_server_proc()

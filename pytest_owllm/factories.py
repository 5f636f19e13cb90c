"""Fixture factories, in pytest-postgresql's style: each returns a session-scoped fixture,
to assign to a name in a ``conftest.py``::

    from pytest_owllm import factories

    # the "demo" server of another config, in its own home, once per run
    other_demo = factories.owllm_server_proc("demo", config="configs/other.yaml",
                                             home="/tmp/owllm-other")
    # the tool server of that config
    other_tools = factories.owllm_tool_server_proc(config="configs/other.yaml")

Arguments left out (None) come from the plugin's settings (``--owllm-config``,
``--owllm-home`` and their ini keys), so ``owllm_server_proc()`` is the default
``owllm_server`` fixture.  A relative ``config`` is taken from the rootdir.  What a factory's
fixture starts belongs to the run like every server the plugin starts (stopped at its end
unless ``--owllm-keep-servers``), and is started once per run across xdist workers.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from owllm.config import load_config
from owllm.envs import EnvRegistry
from owllm.errors import OwllmError
from owllm.paths import resolve_home
from owllm.servers.manager import LLMServerManager
from owllm.servers.reaper import start_owned_tool_server
from owllm.state_store import ServerStatus
from pytest_owllm.run import run_owner, shared_dir

PathLike = str | os.PathLike[str]


def owllm_manager_for(request: pytest.FixtureRequest, config: PathLike | None = None,
                      home: PathLike | None = None) -> LLMServerManager:
    """The run's manager (the ``owllm_manager`` fixture) when neither ``config`` nor ``home``
    is given, else a manager of that config and home, owned by the run the same way."""
    if config is None and home is None:
        manager: LLMServerManager = request.getfixturevalue("owllm_manager")
        return manager
    run_settings = request.getfixturevalue("owllm_settings")
    path = Path(config) if config is not None else run_settings.config_path
    if not path.is_absolute():
        path = request.config.rootpath / path
    try:
        loaded = load_config(path)
        owllm_home = resolve_home(home if home is not None else run_settings.home,
                                  loaded.path).ensure()
    except OwllmError as exc:
        raise pytest.UsageError(f"owllm: {request.fixturename}: {exc}") from exc
    registry = EnvRegistry(owllm_home, config_path=loaded.path, progress=False)
    manager = LLMServerManager(loaded, home=owllm_home, registry=registry)
    manager.owner = run_owner(request.config)
    return manager


def start_shared(request: pytest.FixtureRequest, manager: LLMServerManager,
                 model_id: str) -> dict[str, Any]:
    """The RUNNING server's StateStore row: the first xdist worker starts it under a lock in
    the run's shared folder (one lock per home and model), the others find it running."""
    home = hashlib.sha256(str(manager.home.root).encode()).hexdigest()[:8]
    lock = shared_dir(request.config) / f"owllm-server-{home}-{model_id}.lock"
    with FileLock(str(lock)):
        row = manager.reconcile(model_id)
        if row and row["status"] == ServerStatus.RUNNING and row.get("healthy"):
            return row
        return manager.start_server(model_id)  # owned by the run from its launch


def owllm_server_proc(model_id: str | None = None, *, config: PathLike | None = None,
                      home: PathLike | None = None) -> Callable[..., dict[str, Any]]:
    """A session fixture: the RUNNING server (its StateStore row) of ``model_id`` in
    ``config`` and ``home``; without ``model_id``, of each parametrized ``owllm_model_id``."""
    if model_id is None:
        @pytest.fixture(scope="session")
        def owllm_server_each(request: pytest.FixtureRequest,
                              owllm_model_id: str) -> dict[str, Any]:
            return start_shared(request, owllm_manager_for(request, config, home),
                                owllm_model_id)
        return owllm_server_each

    @pytest.fixture(scope="session")
    def owllm_server_proc_fixture(request: pytest.FixtureRequest) -> dict[str, Any]:
        return start_shared(request, owllm_manager_for(request, config, home), model_id)
    return owllm_server_proc_fixture


def owllm_tool_server_proc(*, config: PathLike | None = None,
                           home: PathLike | None = None) -> Callable[..., dict[str, Any]]:
    """A session fixture: the tool server (url, pid) of ``config``'s tools in ``home``,
    started once per run like the model servers (and owned by the run the same way)."""
    @pytest.fixture(scope="session")
    def owllm_tool_server_proc_fixture(request: pytest.FixtureRequest) -> dict[str, Any]:
        manager = owllm_manager_for(request, config, home)
        digest = hashlib.sha256(str(manager.home.root).encode()).hexdigest()[:8]
        with FileLock(str(shared_dir(request.config) / f"owllm-tool-server-{digest}.lock")):
            return start_owned_tool_server(run_owner(request.config), manager.home,
                                           config=manager.config, port=0)
    return owllm_tool_server_proc_fixture

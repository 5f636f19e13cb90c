"""File modes: the home's ``.owllm/`` holds system prompts, errors and server tokens
(state.db), logs and run files; they were world-readable (files 0644, folders 0755 under the
usual umask 022).  After a real model-server and tool-server start and stop, every folder
under ``.owllm/`` is 0700 and every file 0600, and a home made by an older OWLLM is
tightened on its next use.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from owllm.paths import Home
from owllm.tools.manage import start_tool_server, stop_tool_server
from tests.servers.conftest import StubBackend, make_config, make_manager


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The umask most users have (022), whatever the test runner's is."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def modes(state_dir: Path) -> dict[str, str]:
    """``{relative path: octal mode}`` of everything under (and including) ``state_dir``."""
    found = {".": oct(stat.S_IMODE(state_dir.stat().st_mode))}
    for path in state_dir.rglob("*"):
        found[str(path.relative_to(state_dir))] = oct(stat.S_IMODE(path.lstat().st_mode))
    return found


def wrong(state_dir: Path) -> dict[str, str]:
    """What is not private: folders must be 0700, files 0600."""
    out = {}
    for name, mode in modes(state_dir).items():
        want = "0o700" if (state_dir / name).is_dir() else "0o600"
        if mode != want:
            out[name] = f"{mode} (want {want})"
    return out


def start_and_stop_everything(tmp_path: Path) -> Path:
    manager = make_manager(make_config(tmp_path))
    manager.start_server("ok2")
    home = manager.home
    start_tool_server(home, port=0)
    stop_tool_server(home)
    manager.stop_all()
    return home.state_dir


def test_everything_under_owllm_is_private_after_a_start_and_stop(
        tmp_path: Path, tmp_home: Path, stub_backend: StubBackend, usual_umask: None) -> None:
    state_dir = start_and_stop_everything(tmp_path)
    names = set(modes(state_dir))
    # The run really made the files this test is about.
    assert {"state.db", "logs", "logs/ok2.log", "logs/tool-server.log", "locks",
            "locks/ports.lock", "run"} <= names, sorted(names)
    assert wrong(state_dir) == {}


def test_a_home_made_world_readable_is_tightened(tmp_path: Path, tmp_home: Path,
                                                 stub_backend: StubBackend,
                                                 usual_umask: None) -> None:
    state_dir = start_and_stop_everything(tmp_path)
    for path in [state_dir, *state_dir.rglob("*")]:  # as an older OWLLM left them
        path.chmod(0o755 if path.is_dir() else 0o644)
    Home(tmp_home).ensure()
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    start_and_stop_everything(tmp_path)
    assert wrong(state_dir) == {}

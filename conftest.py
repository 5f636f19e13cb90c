"""Root conftest: every test runs against an isolated OWLLM home, and no test run may leave a
process behind.

Orphan check: the first pytest process (the xdist controller, or the only process) puts a
token in the environment; every process started below it inherits it.  When the run ends,
any live process still carrying the token is reported, killed (ours, by pid), and the run
fails.  This also catches daemons that were reparented away from pytest (``setsid``).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psutil
import pytest

pytest_plugins = ["pytester"]

TOKEN_VAR = "OWLLM_TEST_RUN_TOKEN"


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # controller or single process
        os.environ[TOKEN_VAR] = uuid.uuid4().hex


def _leftovers(token: str) -> list[psutil.Process]:
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(TOKEN_VAR) == token and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput"):
        return
    token = os.environ.get(TOKEN_VAR)
    if not token:
        return
    # xdist workers are still alive at this point and carry the token: skip them.
    workers = {p.pid for p in psutil.Process().children()}
    leftover = [p for p in _leftovers(token) if p.pid not in workers]
    if not leftover:
        return
    lines = []
    for proc in leftover:
        try:
            lines.append(f"  pid {proc.pid}: {' '.join(proc.cmdline()[:4])}")
            proc.kill()
        except psutil.Error:
            continue
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = "processes left running after the test run (killed now):\n" + "\n".join(lines)
    if reporter is not None:
        reporter.write_line(message, red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def tmp_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh OWLLM home; ``$OWLLM_HOME`` points at it for the test's duration."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("OWLLM_HOME", str(home))
    return home

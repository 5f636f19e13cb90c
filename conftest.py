"""Root conftest: every test runs against an isolated OWLLM home, and no test run may leave a
process behind, nor a file in the repository.

Orphan check: the first pytest process (the xdist controller, or the only process) puts a
token in the environment; every process started below it inherits it.  When the run ends,
any live process still carrying the token is reported, killed (ours, by pid), and the run
fails.  This also catches daemons that were reparented away from pytest (``setsid``).

Clean-tree check: the same process records ``git status --porcelain --untracked-files=all``
when the session starts and compares when it ends; any path that is new or changed its status
(untracked, modified, deleted; ignored paths do not show) fails the run with the list.  Tests
write under tmp paths only: a test once passed an ``owllm.paths.Home`` where a path was
expected and committed a folder named ``Home(root=PosixPath('...`` to the repo.  Paths under
an explicit ``--basetemp`` are tmp paths and do not count.  Skipped when the rootdir is not a
git checkout or git is missing; ``--no-clean-tree-check`` (or
``PYTEST_ADDOPTS=--no-clean-tree-check``) turns it off, for example while others edit files
in the same tree during a run: their edits would be reported too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import psutil
import pytest

from owllm.backends._common import SERVERS_VAR

TOKEN_VAR = "OWLLM_TEST_RUN_TOKEN"
CLEAN_TREE_KEY = pytest.StashKey["tuple[Path, frozenset[str]] | None"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--no-clean-tree-check", action="store_true", default=False,
                     help="do not fail the run when tests leave new or changed files in the "
                          "git checkout")


# This repository's own run holds many CPU model servers at once (the model suites' three,
# the hostile tests' three per xdist worker, the in-env tests' own): each gets its share of
# the cores (owllm.backends._common.thread_budget), not a thread pool sized to the machine.
# An explicit OWLLM_CPU_SERVERS or OWLLM_SERVER_THREADS in the environment wins.
REPO_RUN_SERVERS = 6


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # controller or single process
        os.environ[TOKEN_VAR] = uuid.uuid4().hex
        os.environ.setdefault(SERVERS_VAR, str(REPO_RUN_SERVERS))


def git_status(folder: Path) -> tuple[Path, frozenset[str]] | None:
    """``(repo top, {"XY path", ...})`` of the checkout holding ``folder``; None when there is
    no git or no checkout (then there is nothing to compare)."""
    git = shutil.which("git")
    if git is None:
        return None
    # Read-only: no index refresh, so a concurrent git command in the tree never sees a lock.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        top = subprocess.run([git, "-C", str(folder), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, timeout=60, env=env)
        if top.returncode != 0 or not top.stdout.strip():
            return None
        root = Path(top.stdout.strip())
        # -z: names as they are (no quoting of odd characters), NUL separated.
        out = subprocess.run([git, "-C", str(root), "status", "--porcelain", "-z",
                              "--untracked-files=all"], capture_output=True, timeout=120, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    entries: set[str] = set()
    fields = iter(out.stdout.decode("utf-8", "surrogateescape").split("\0"))
    for field in fields:
        if not field:
            continue
        entries.add(field)
        if field[0] in "RC":  # a rename or copy is followed by its source path
            next(fields, None)
    return root, frozenset(entries)


def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    if hasattr(config, "workerinput") or config.getoption("no_clean_tree_check"):
        return
    config.stash[CLEAN_TREE_KEY] = git_status(config.rootpath)


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


def _fail_run(session: pytest.Session, message: str) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(message, red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput"):
        return
    _check_clean_tree(session)
    _check_orphans(session)


def _check_clean_tree(session: pytest.Session) -> None:
    before = session.config.stash.get(CLEAN_TREE_KEY, None)
    if before is None:
        return
    root, entries = before
    after = git_status(root)
    if after is None:
        return
    new = sorted(after[1] - entries)
    basetemp = session.config.option.basetemp
    if basetemp:  # an explicit --basetemp inside the checkout is a tmp path all the same
        inside = Path(basetemp).resolve()
        new = [e for e in new if not (root / e[3:]).resolve().is_relative_to(inside)]
    if new:
        _fail_run(session, f"the test run left files in the repository {root} (tests must "
                           "write under tmp paths; --no-clean-tree-check to skip):\n"
                  + "\n".join(f"  {entry}" for entry in new))


def _check_orphans(session: pytest.Session) -> None:
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
    _fail_run(session, "processes left running after the test run (killed now):\n"
              + "\n".join(lines))


@pytest.fixture
def tmp_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh OWLLM home; ``$OWLLM_HOME`` points at it for the test's duration."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("OWLLM_HOME", str(home))
    return home

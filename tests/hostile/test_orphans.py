"""Orphans: a server that runs while no StateStore row records it can never be stopped.

Two ways a start made one, both with real processes and a real store:

* the start was interrupted during its readiness wait (Ctrl-C in ``owllm tools serve`` or
  ``server start``): the wait only cleaned up after ``Exception``, and KeyboardInterrupt is
  not one, so the server kept running with a STARTING row until someone ran ``stop``;
* the row that records the launched pid could not be written (another process held the
  store's write lock past the busy timeout, a read-only or full disk): the launch had no
  record at all, so nothing would ever stop it.

A start that fails after its launch now kills what it launched, and says why.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import owllm._state_db
import owllm.servers.executor
from owllm.errors import StateStoreError
from owllm.paths import Home
from owllm.state_store import StateStore
from tests.hostile._isolation import ROOT, python, run_isolated
from tests.procs import gone
from tests.servers.conftest import StubBackend, make_config, make_manager


def _ctrl_c_works() -> None:
    """In the child: SIGINT back to its default.  A test run started in the background by a
    shell (``pytest ... &``) ignores SIGINT, children inherit that, and a Ctrl-C test
    would then wait for an interrupt that is never delivered."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_pid(db: Path, kind: str, timeout: float = 60) -> dict[str, Any]:
    """The first server row of ``kind`` that records a pid (the launch happened)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.exists():
            rows = [r for r in StateStore(db).list_servers(kind=kind) if r.get("pid")]
            if rows:
                return rows[0]
        time.sleep(0.1)
    raise AssertionError(f"no {kind} server was launched within {timeout}s")


def wait_gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.1)
    return gone(pid)


def kill_leftover(pid: int | None) -> None:
    """Cleanup for the old behaviour: the orphan is killed here so the run stays clean."""
    if pid and not gone(pid):
        with contextlib.suppress(ProcessLookupError):  # it was started in its own session
            os.killpg(pid, signal.SIGKILL)


# -- interrupted during the readiness wait ------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_during_tools_serve_kills_the_tool_server(tmp_path: Path, tmp_home: Path,
                                                        sig: signal.Signals) -> None:
    # A tool module that takes long to import keeps the tool server from getting ready.
    (tmp_path / "slowtools.py").write_text("import time\ntime.sleep(60)\n"
                                           "def noop() -> str:\n    return 'x'\n")
    config = tmp_path / "configs" / "llm_backends.yaml"
    config.parent.mkdir()
    config.write_text("models: {}\ntools:\n  - callable: slowtools:noop\n    parameters:\n"
                      "      type: object\n      properties: {}\n")
    cli = subprocess.Popen([sys.executable, "-m", "owllm", "--home", str(tmp_home), "--config",
                            str(config), "tools", "serve", "--port", "0", "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=_ctrl_c_works)
    pid = None
    try:
        row = wait_for_pid(tmp_home / ".owllm" / "state.db", "tools")
        pid = row["pid"]
        time.sleep(0.5)  # well inside the readiness wait
        cli.send_signal(sig)
        cli.communicate(timeout=60)
        assert cli.returncode == (130 if sig == signal.SIGINT else 143)
        assert wait_gone(pid), "the interrupted start left the tool server running"
        final = StateStore(tmp_home / ".owllm" / "state.db").get_server(row["model_id"],
                                                                        kind=row["kind"])
        assert final is not None and final["status"] == "FAILED"
        assert "interrupted" in final["last_error"]
    finally:
        cli.kill()
        cli.wait()
        kill_leftover(pid)


START_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from tests.servers.conftest import StubBackend, make_manager
    import owllm.servers.manager as m
    m.get_backend = lambda name: StubBackend()
    make_manager({config!r}).start_server("loads")
""")


def test_ctrl_c_during_server_start_kills_the_model_server(tmp_path: Path,
                                                         tmp_home: Path) -> None:
    config = tmp_path / "configs" / "llm_backends.yaml"
    config.parent.mkdir()
    config.write_text('models:\n  loads: {base_model: stub, server_args: '
                      '["--mode", "slow", "--delay", "60"]}\n')
    script = START_SCRIPT.format(root=str(ROOT), config=str(config))
    starter = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_works)
    pid = None
    try:
        row = wait_for_pid(tmp_home / ".owllm" / "state.db", "model")
        pid = row["pid"]
        time.sleep(0.5)
        starter.send_signal(signal.SIGINT)
        _out, err = starter.communicate(timeout=60)
        assert "KeyboardInterrupt" in err
        assert wait_gone(pid), "the interrupted start left the model server running"
        final = StateStore(tmp_home / ".owllm" / "state.db").get_server("loads")
        assert final is not None and final["status"] == "FAILED"
        assert "interrupted" in final["last_error"]
    finally:
        starter.kill()
        starter.wait()
        kill_leftover(pid)


# -- the pid row cannot be written ---------------------------------------------------------

def test_model_server_whose_pid_cannot_be_recorded_is_stopped(
        tmp_path: Path, tmp_home: Path, stub_backend: StubBackend,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process holds the store's write lock past the busy timeout right after the
    launch: the pid row fails with a real SQLite error (here after 0.3 s, not 60)."""
    manager = make_manager(make_config(tmp_path))
    monkeypatch.setattr(owllm._state_db, "BUSY_TIMEOUT_MS", 300)
    real_launch = owllm.servers.executor.launch
    holder: list[sqlite3.Connection] = []
    launched: list[subprocess.Popen[bytes]] = []

    def launch_then_lock(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = real_launch(*args, **kwargs)
        launched.append(proc)
        other = sqlite3.connect(manager.store.db_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer, holding the lock
        holder.append(other)
        return proc

    monkeypatch.setattr("owllm.servers.executor.launch", launch_then_lock)
    try:
        with pytest.raises(StateStoreError) as info:
            manager.start_server("ok2")
        pid = launched[0].pid
        assert "could not be recorded" in str(info.value) and "busy" in str(info.value)
        assert f"pid {pid}" in str(info.value)
        assert wait_gone(pid), "a launch without a record was left running"
    finally:
        for conn in holder:
            conn.rollback()
            conn.close()
        for proc in launched:
            proc.kill()
            proc.wait()


FROZEN_MODEL = """
import json, os, subprocess
import owllm.servers.executor as x
import owllm.servers.manager as m
from owllm.errors import StateStoreError
from tests.procs import gone
from tests.servers.conftest import StubBackend, make_manager
m.get_backend = lambda name: StubBackend()
manager = make_manager({config!r})
real_launch, out = x.launch, {{}}

def launch_then_freeze(*args, **kwargs):
    proc = real_launch(*args, **kwargs)
    out["pid"] = proc.pid
    db = str(manager.store.db_path)  # the disk under the store turns read-only
    subprocess.run(["mount", "--bind", db, db], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", db], check=True)
    return proc

x.launch = launch_then_freeze
try:
    manager.start_server("ok2")
    out["error"] = None
except Exception as exc:
    out["error"], out["store_error"] = str(exc), isinstance(exc, StateStoreError)
out["left_running"] = not gone(out["pid"])
if out["left_running"]:
    os.killpg(out["pid"], 9)
print(json.dumps(out))
"""

FROZEN_TOOLS = """
import json, os, subprocess
import owllm.servers.executor as x
import owllm.servers.tool_server as t
from owllm.errors import StateStoreError
from owllm.paths import Home
from tests.procs import gone
home = Home({home!r})
real_launch, out = x.launch, {{}}

def launch_then_freeze(*args, **kwargs):
    proc = real_launch(*args, **kwargs)
    out["pid"] = proc.pid
    db = str(home.state_db)
    subprocess.run(["mount", "--bind", db, db], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", db], check=True)
    return proc

x.launch = launch_then_freeze
try:
    t.start_tool_server(home, port=0)
    out["error"] = None
except Exception as exc:
    out["error"], out["store_error"] = str(exc), isinstance(exc, StateStoreError)
out["left_running"] = not gone(out["pid"])
if out["left_running"]:
    os.killpg(out["pid"], 9)
print(json.dumps(out))
"""


@pytest.mark.parametrize("server", ["model", "tools"])
def test_launch_on_a_store_turned_read_only_is_stopped(tmp_path: Path, tmp_home: Path,
                                                      server: str) -> None:
    """The store's file turns read-only (a real read-only mount of state.db) between the
    launch and the row that records its pid."""
    if server == "model":
        code = FROZEN_MODEL.format(config=str(make_config(tmp_path)))
    else:
        code = FROZEN_TOOLS.format(home=str(tmp_home))
    StateStore(Home(tmp_home).ensure().state_db)  # the file exists before the mount
    result = run_isolated("", python(code), env={"OWLLM_HOME": str(tmp_home)})
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["left_running"] is False, "a launch without a record was left running"
    assert out["store_error"] is True, out
    assert "could not be recorded" in out["error"] and "read-only" in out["error"]


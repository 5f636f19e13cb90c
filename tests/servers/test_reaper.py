"""Servers die with the run that started them (issue 19): the run's watchdog
(``owllm.servers.reaper``) stops what a killed run owned, and nothing else.

Everything is real: a pytest run (or ``owllm model smoke``, or a script) in a subprocess
starts real servers through the real manager, the test kills it with SIGKILL as a CI runner
does, and the servers' processes, their StateStore rows and the events are checked.  The
servers are tests/servers' stub (a real HTTP server; ``--children`` gives it a child in its
group and one in a session of its own, as vLLM's engine has): the subprocess swaps the
backend and the env for the stub's, as tests/cli/test_common.py does.  The last test does the
same with the demo model on the transformers backend, as the issue's user did.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from owllm.servers.manager import LLMServerManager
from owllm.servers.owners import owned_servers
from owllm.state_store import StateStore
from tests.procs import gone
from tests.servers.conftest import StubBackend, make_manager

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 15.0  # the bound: the server and its descendants gone, row STOPPED

CONFIG = """
models:
  tree: {base_model: stub, server_args: ["--children"]}
  ok2: {base_model: stub}
  starting: {base_model: stub, server_args: ["--mode", "slow", "--delay", "60", "--children"],
             startup_timeout_s: 120}
  busy: {base_model: stub, server_args: ["--mode", "busy", "--health-delay", "30"]}
"""

# The project's conftest: the run's servers are stubs on this interpreter.
PROJECT_CONFTEST = """
import pytest
import owllm.servers.manager as manager
from tests.servers.conftest import StubBackend, ThisPython

manager.get_backend = lambda name: StubBackend()


@pytest.fixture(scope="session")
def owllm_registry():
    return ThisPython()
"""

# Each test starts (or attaches to) the servers of $HOLD_MODELS, says so in a marker file,
# and holds them until the outer test creates "go"; then checks they still serve.
PROJECT_TESTS = """
import json, os, time
from pathlib import Path

import httpx

MODELS = os.environ["HOLD_MODELS"].split(",")
MARKS = Path(os.environ["HOLD_MARKS"])


def hold(factory, name):
    rows = {m: factory(m) for m in MODELS}
    (MARKS / f"{name}.json").write_text(json.dumps({"pid": os.getpid()}))
    deadline = time.monotonic() + 120
    while not (MARKS / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    for row in rows.values():
        assert httpx.get(row["url"] + "/health", timeout=10).status_code == 200


def test_a(owllm_server_factory):
    hold(owllm_server_factory, "a")


def test_b(owllm_server_factory):
    hold(owllm_server_factory, "b")
"""

# `owllm ...` with the stub backend and this interpreter as every model's env.
CLI = """
import sys
import owllm.servers.manager as manager
from tests.servers.conftest import StubBackend, ThisPython

manager.get_backend = lambda name: StubBackend()
manager.EnvRegistry = lambda *args, **kwargs: ThisPython()
from owllm.cli import main

sys.exit(main(sys.argv[1:]))
"""

# The Python API: servers started inside owned_servers(), then the script waits to be killed.
API = """
import sys, time
import owllm.servers.manager as manager
from owllm.servers.owners import owned_servers
from tests.servers.conftest import StubBackend, ThisPython

manager.get_backend = lambda name: StubBackend()
mgr = manager.LLMServerManager(sys.argv[1], registry=ThisPython())
with owned_servers(mgr):
    mgr.start_server(sys.argv[2])
    time.sleep(600)
"""


def child_env(home: Path, **extra: str) -> dict[str, str]:
    """The subprocess's environment: this checkout importable, the home, no outer xdist."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "OWLLM_HOME")) and k != "PYTHONPATH"}
    env.update(OWLLM_HOME=str(home), PYTHONPATH=str(REPO), OWLLM_PROGRESS="0", **extra)
    return env


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               proc: subprocess.Popen[bytes] | None = None, output: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    log = output.read_text(errors="replace")[-4000:] if output and output.exists() else ""
    raise AssertionError(f"{what}: not within {timeout:.0f}s\n{log}")


class Run:
    """A subprocess (a pytest run, a CLI command, a script) and everything it started."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], output: Path) -> None:
        self.output = output
        with open(output, "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out,
                                         stderr=subprocess.STDOUT)
        self.seen: dict[int, psutil.Process] = {}

    def note_tree(self) -> None:
        """Remember every process below the run (workers, servers, the watchdog)."""
        try:
            for proc in psutil.Process(self.proc.pid).children(recursive=True):
                self.seen.setdefault(proc.pid, proc)
        except psutil.Error:
            pass

    def watchdogs(self) -> list[psutil.Process]:
        found = []
        for proc in self.seen.values():
            try:
                if "owllm.servers.reaper" in proc.cmdline():
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def kill(self) -> float:
        """SIGKILL the run's main process (only it, as `kill -9 PID`); returns the time."""
        self.note_tree()
        os.kill(self.proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        self.proc.wait(timeout=30)
        return killed_at

    def finish(self, timeout: float = 60) -> None:
        """Wait for what the run left (xdist workers end once their controller is gone,
        the watchdog once its work is done); kill any straggler, by pid."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        deadline = time.monotonic() + timeout
        for proc in self.seen.values():
            while not gone(proc.pid, proc.create_time()) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not gone(proc.pid, proc.create_time()):
                with contextlib.suppress(psutil.Error):
                    proc.kill()


@pytest.fixture
def project(tmp_path: Path, tmp_home: Path) -> Path:
    folder = tmp_path / "project"
    (folder / "configs").mkdir(parents=True)
    (folder / "configs" / "llm_backends.yaml").write_text(CONFIG)
    (folder / "conftest.py").write_text(PROJECT_CONFTEST)
    (folder / "test_hold.py").write_text(PROJECT_TESTS)
    (folder / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "marks").mkdir()
    return folder


@pytest.fixture
def home_manager(project: Path, tmp_home: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[LLMServerManager]:
    """A manager of the project's home (stub backend), for servers started by the test
    itself; at the end every server of the home is stopped, whatever the test did."""
    monkeypatch.setattr("owllm.servers.manager.get_backend", lambda name: StubBackend())
    manager = make_manager(project / "configs" / "llm_backends.yaml")
    yield manager
    manager.stop_all()


@pytest.fixture
def runs(home_manager: LLMServerManager) -> Iterator[list[Run]]:
    """Runs a test started: whatever they leave is ended (after the servers are stopped)."""
    started: list[Run] = []
    yield started
    home_manager.stop_all()
    for run in started:
        run.finish()


def pytest_run(runs: list[Run], project: Path, tmp_home: Path, *args: str,
               models: str = "tree") -> Run:
    marks = project.parent / "marks"
    run = Run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
              cwd=project, env=child_env(tmp_home, HOLD_MODELS=models, HOLD_MARKS=str(marks)),
              output=project.parent / f"run-{len(runs)}.txt")
    runs.append(run)
    return run


def marks_of(project: Path, *names: str, run: Run) -> dict[str, int]:
    """The pids of the processes running the held tests, once they all hold."""
    folder = project.parent / "marks"

    def read() -> dict[str, int] | None:
        found = {n: folder / f"{n}.json" for n in names}
        if not all(p.exists() for p in found.values()):
            return None
        try:
            return {n: json.loads(p.read_text())["pid"] for n, p in found.items()}
        except ValueError:
            return None  # being written

    pids: dict[str, int] = wait_until(read, 60, f"tests {names} holding their servers",
                                      run.proc, run.output)
    run.note_tree()
    return pids


def store_of(home: Path) -> StateStore:
    return StateStore(home / ".owllm" / "state.db")


def server_tree(row: dict[str, Any]) -> list[psutil.Process]:
    """The server's process and every descendant (the one in its own session included)."""
    root = psutil.Process(row["pid"])
    return [root, *root.children(recursive=True)]


def assert_reaped(home: Path, model_id: str, tree: list[psutil.Process], killed_at: float,
                  kind: str) -> None:
    """Within DEADLINE_S of the kill: the whole tree gone, the row STOPPED, an event naming
    the watchdog."""
    store = store_of(home)

    def done() -> bool:
        row = store.get_server(model_id)
        return (all(gone(p.pid, p.create_time()) for p in tree)
                and row is not None and row["status"] == "STOPPED"
                and bool(store.list_events(kind="server", subject=model_id, status="REAPED")))

    wait_until(done, DEADLINE_S - (time.monotonic() - killed_at),
               f"{model_id}'s server tree stopped by the watchdog")
    print(f"{model_id}: reaped {time.monotonic() - killed_at:.2f}s after the kill")
    events = store.list_events(kind="server", subject=model_id, status="REAPED")
    assert "owllm reaper" in events[0]["message"] and kind in events[0]["message"]
    assert events[0]["data"]["reaper_pid"] == events[0]["pid"]


def assert_watchdog_ends(run: Run, timeout: float = 30) -> None:
    """The watchdog never outlives its work."""
    for proc in run.watchdogs():
        try:
            proc.wait(timeout=timeout)
        except psutil.TimeoutExpired:
            raise AssertionError(f"the watchdog {proc.pid} still runs {timeout:.0f}s after "
                                 "its run ended") from None
        except psutil.Error:
            continue


# -- pytest runs ---------------------------------------------------------------------------

def test_killed_pytest_run_stops_the_servers_it_started(project: Path, tmp_home: Path,
                                                        runs: list[Run]) -> None:
    run = pytest_run(runs, project, tmp_home, "test_hold.py::test_a")
    marks_of(project, "a", run=run)
    row = store_of(tmp_home).get_server("tree")
    assert row is not None and row["status"] == "RUNNING"
    tree = server_tree(row)
    assert len(tree) == 3  # the server, its child, its child in a session of its own
    owner = store_of(tmp_home).get_server_owner("tree")
    assert owner is not None and owner["kind"] == "pytest" and owner["pid"] == run.proc.pid
    assert len(run.watchdogs()) == 1
    assert_reaped(tmp_home, "tree", tree, run.kill(), "pytest run")
    assert_watchdog_ends(run)


def test_killed_xdist_controller_stops_the_servers_its_workers_started(
        project: Path, tmp_home: Path, runs: list[Run]) -> None:
    run = pytest_run(runs, project, tmp_home, "-n", "2")
    pids = marks_of(project, "a", "b", run=run)
    assert pids["a"] != pids["b"] and run.proc.pid not in pids.values()  # two workers
    row = store_of(tmp_home).get_server("tree")
    assert row is not None and row["status"] == "RUNNING"
    assert psutil.Process(row["pid"]).ppid() in pids.values()  # a worker launched it
    assert len(run.watchdogs()) == 1  # one per run, the controller's
    assert_reaped(tmp_home, "tree", server_tree(row), run.kill(), "pytest run")
    assert_watchdog_ends(run, timeout=60)


def test_servers_running_before_the_run_survive_its_kill(
        project: Path, tmp_home: Path, runs: list[Run],
        home_manager: LLMServerManager) -> None:
    before = home_manager.start_server("ok2")
    run = pytest_run(runs, project, tmp_home, "test_hold.py::test_a", models="ok2,tree")
    marks_of(project, "a", run=run)
    tree_row = store_of(tmp_home).get_server("tree")
    assert tree_row is not None
    assert_reaped(tmp_home, "tree", server_tree(tree_row), run.kill(), "pytest run")
    assert_watchdog_ends(run)
    after = home_manager.reconcile("ok2")
    assert after is not None and after["status"] == "RUNNING" and after["healthy"]
    assert after["pid"] == before["pid"]
    assert store_of(tmp_home).get_server_owner("ok2") is None  # reused, never the run's
    assert not store_of(tmp_home).list_events(subject="ok2", status="REAPED")


def test_servers_of_a_keep_servers_run_survive_its_kill(
        project: Path, tmp_home: Path, runs: list[Run],
        home_manager: LLMServerManager) -> None:
    run = pytest_run(runs, project, tmp_home, "test_hold.py::test_a", "--owllm-keep-servers")
    marks_of(project, "a", run=run)
    assert not run.watchdogs()  # nothing it starts is to be stopped: no watchdog at all
    run.kill()
    time.sleep(2)
    row = home_manager.reconcile("tree")
    assert row is not None and row["status"] == "RUNNING" and row["healthy"]
    owner = store_of(tmp_home).get_server_owner("tree")
    assert owner is not None and owner["kept"] and owner["kind"] == "pytest"
    state = subprocess.run([sys.executable, "-m", "owllm", "state", "--json"],
                           env=child_env(tmp_home), capture_output=True, text=True,
                           timeout=60, check=True)
    shown = {s["model_id"]: s for s in json.loads(state.stdout)["servers"]}
    assert shown["tree"]["owner"]["kept"] is True
    assert shown["tree"]["owner"]["alive"] is False  # the run is gone; the server is kept


def test_killed_worker_does_not_stop_shared_servers(project: Path, tmp_home: Path,
                                                    runs: list[Run]) -> None:
    run = pytest_run(runs, project, tmp_home, "-n", "2")
    pids = marks_of(project, "a", "b", run=run)
    row = store_of(tmp_home).get_server("tree")
    assert row is not None
    os.kill(pids["b"], signal.SIGKILL)  # the worker holding test_b, alone
    time.sleep(3)  # longer than the watchdog's poll and supervision intervals
    assert not gone(row["pid"], row["pid_create_time"])
    assert (store_of(tmp_home).get_server("tree") or {}).get("status") == "RUNNING"
    (project.parent / "marks" / "go").write_text("")  # test_a checks the server still serves
    run.proc.wait(timeout=120)
    out = run.output.read_text(errors="replace")
    assert "1 failed, 1 passed" in out, out[-3000:]  # test_b: its worker crashed
    assert "test_a" not in out.split("short test summary")[-1], out[-3000:]
    final = store_of(tmp_home).get_server("tree")
    assert final is not None and final["status"] == "STOPPED"  # stopped by the run's end
    assert gone(row["pid"], row["pid_create_time"])
    assert not store_of(tmp_home).list_events(subject="tree", status="REAPED")
    assert_watchdog_ends(run)


# -- smoke commands and the Python API ----------------------------------------------------

@pytest.mark.parametrize(("kind", "model_id", "status"), [
    ("smoke", "starting", "STARTING"),
    ("smoke", "busy", "RUNNING"),
    ("api", "tree", "RUNNING"),
])
def test_killed_command_stops_the_server_it_started(
        project: Path, tmp_home: Path, runs: list[Run], kind: str, model_id: str,
        status: str) -> None:
    config = str(project / "configs" / "llm_backends.yaml")
    argv = ([sys.executable, "-c", CLI, "--config", config, "model", "smoke", model_id]
            if kind == "smoke" else [sys.executable, "-c", API, config, model_id])
    run = Run(argv, cwd=project, env=child_env(tmp_home), output=project.parent / "out.txt")
    runs.append(run)
    store = store_of(tmp_home)

    def launched() -> dict[str, Any] | None:
        row = store.get_server(model_id)
        return row if row and row["status"] == status and row.get("pid") else None

    row = wait_until(launched, 60, f"{model_id} {status}", run.proc, run.output)
    tree = server_tree(row)
    if model_id != "busy":
        wait_until(lambda: len(server_tree(row)) == 3, 10, "the server's children")
        tree = server_tree(row)
    owner = store.get_server_owner(model_id)
    assert owner is not None and owner["kind"] == kind and not owner["kept"]
    assert_reaped(tmp_home, model_id, tree, run.kill(), f"{kind} run")
    assert_watchdog_ends(run)


def test_owned_servers_block_stops_its_servers_and_state_names_the_owner(
        project: Path, tmp_home: Path, home_manager: LLMServerManager) -> None:
    with owned_servers(home_manager) as owner:
        row = home_manager.start_server("ok2")
        state = subprocess.run([sys.executable, "-m", "owllm", "state", "--json"],
                               env=child_env(tmp_home), capture_output=True, text=True,
                               timeout=60, check=True)
        shown = {s["model_id"]: s for s in json.loads(state.stdout)["servers"]}
        assert shown["ok2"]["owner"] == {
            "run_id": owner.run_id, "kind": "api", "pid": os.getpid(), "kept": False,
            "alive": True, "since": shown["ok2"]["owner"]["since"]}
        watchdog = owner._reaper
        assert watchdog is not None and watchdog.proc.poll() is None
    assert watchdog.proc.poll() is not None  # released with the block
    assert (home_manager.store.get_server("ok2") or {}).get("status") == "STOPPED"
    assert gone(row["pid"], row["pid_create_time"])
    assert home_manager.owner is None
    with pytest.raises(httpx.HTTPError):
        httpx.get(row["url"] + "/health", timeout=2)


def test_owned_servers_keep_hands_over(project: Path, tmp_home: Path,
                                       home_manager: LLMServerManager) -> None:
    with owned_servers(home_manager, keep=True) as owner:
        row = home_manager.start_server("ok2")
        assert owner._reaper is None  # kept servers need no watchdog
    again = home_manager.reconcile("ok2")
    assert again is not None and again["status"] == "RUNNING" and again["pid"] == row["pid"]
    assert (home_manager.store.get_server_owner("ok2") or {}).get("kept") is True
    # A start outside any run clears the record: nobody owns what `server start` starts.
    home_manager.stop_server("ok2")
    home_manager.start_server("ok2")
    assert home_manager.store.get_server_owner("ok2") is None


# -- the scenario: the demo model on the transformers backend ---------------------

DEMO_CONFIG = """
models:
  my_model:
    base_model: "{base}"
    backend: transformers
    device: cpu
    generation: {{max_tokens: 4}}
"""
DEMO_TEST = """
import time


def test_hold(owllm_server):
    assert owllm_server["status"] == "RUNNING"
    time.sleep(600)
"""


@pytest.mark.slow
def test_killed_pytest_run_stops_the_demo_model_server(tmp_path: Path, tmp_home: Path,
                                                       runs: list[Run]) -> None:
    """``pytest --owllm-model my_model`` started the server; ``kill -9`` of pytest; the
    server is gone within 15 s (it was still running 10 s later before)."""
    materialized = REPO / ".owllm" / "cache" / "models" / "tiny-llama-seed0"
    base = "demo://tiny-llama"
    if (materialized / ".owllm-demo.json").is_file():  # the checkout's: no rebuild
        shutil.copytree(materialized, tmp_path / "tiny-llama")
        base = str(tmp_path / "tiny-llama")
    project = tmp_path / "demo-project"
    (project / "configs").mkdir(parents=True)
    (project / "configs" / "llm_backends.yaml").write_text(DEMO_CONFIG.format(base=base))
    (project / "test_mine.py").write_text(DEMO_TEST)
    (project / "pytest.ini").write_text("[pytest]\nowllm_suites = false\n")
    run = Run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
               "--owllm-model", "my_model"],
              cwd=project, env=child_env(tmp_home), output=tmp_path / "demo-run.txt")
    runs.append(run)
    store = store_of(tmp_home)

    def running() -> dict[str, Any] | None:
        row = store.get_server("my_model")
        return row if row and row["status"] == "RUNNING" else None

    row = wait_until(running, 300, "the demo server RUNNING", run.proc, run.output)
    tree = server_tree(row)
    assert_reaped(tmp_home, "my_model", tree, run.kill(), "pytest run")
    assert_watchdog_ends(run)


def test_watchdog_reaps_what_a_killed_server_left_while_the_run_lives(
        project: Path, tmp_home: Path, home_manager: LLMServerManager) -> None:
    """``kill -9`` of a server (vLLM's API server) during the run: its children (vLLM's
    EngineCore and workers, here the stub's, one in a session of its own) are reaped by the
    run's watchdog within seconds, not when someone next runs ``owllm server status``."""
    with owned_servers(home_manager):
        row = home_manager.start_server("tree")
        tree = server_tree(row)
        assert len(tree) == 3
        os.kill(row["pid"], signal.SIGKILL)
        store = home_manager.store

        def reaped() -> bool:
            current = store.get_server("tree") or {}
            return (current.get("status") == "CRASHED"
                    and all(gone(p.pid, p.create_time()) for p in tree))

        wait_until(reaped, 15, "the killed server's children reaped by the watchdog")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc's clock ticks")
def test_a_clock_step_does_not_read_as_the_run_dying(monkeypatch: pytest.MonkeyPatch) -> None:
    """The watchdog decides "my run died" from the owner's identity: an NTP step during a
    long run must not look like that (it would stop the run's servers under it)."""
    from psutil import _pslinux

    from owllm.servers.owners import process_alive, whoami

    me = whoami()
    base = _pslinux.boot_time()
    monkeypatch.setattr(_pslinux, "boot_time", lambda: base + 3600.0)  # the clock jumps 1 h
    assert process_alive(me)
    assert not process_alive({**me, "pid_start_ticks": (me["pid_start_ticks"] or 0) + 1})

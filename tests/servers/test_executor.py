"""The executor (mirakuru's shape) on a real process: the stub server of this folder."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psutil
import pytest

from owllm.errors import PortInUse, ServerDied, ServerStartTimeout
from owllm.servers.executor import Executor
from owllm.servers.identity import SERVER_TOKEN_VAR
from owllm.servers.ports import ephemeral_port
from owllm.servers.process import probe_health
from tests.procs import gone

STUB = Path(__file__).with_name("stub_server.py")


def stub(tmp_path: Path, *args: str, port: int | None = None,
         **kwargs: object) -> tuple[Executor, str]:
    port = port or ephemeral_port()
    url = f"http://127.0.0.1:{port}"
    executor = Executor([sys.executable, str(STUB), "--port", str(port), *args],
                        tmp_path / "logs" / "stub.log", check=lambda: probe_health(url),
                        what="stub server", **kwargs)  # type: ignore[arg-type]
    return executor, url


def tree_of(pid: int) -> list[psutil.Process]:
    return [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]


def carrying(token: str) -> list[int]:
    """Live processes whose environment carries ``token`` (a leftover of that start)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if (proc.environ().get(SERVER_TOKEN_VAR) == token
                    and proc.status() != psutil.STATUS_ZOMBIE):
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


def test_context_manager_starts_and_stops_the_whole_tree(tmp_path: Path) -> None:
    executor, url = stub(tmp_path, "--children", model_id="m")
    with executor as running:
        assert running is executor and executor.running()
        assert probe_health(url) and executor.startup_s is not None
        pids = [p.pid for p in tree_of(executor.proc.pid)]  # type: ignore[union-attr]
        assert len(pids) >= 2  # the server and the children it spawned
        assert carrying(executor.token)  # every process of the start carries the token
    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(gone(pid) for pid in pids), "the executor left an orphan"
    assert carrying(executor.token) == []
    assert not executor.running()
    assert "starting:" in (tmp_path / "logs" / "stub.log").read_text()


def test_early_exit_is_server_died_with_returncode_and_log(tmp_path: Path) -> None:
    executor, _url = stub(tmp_path, "--mode", "exit", model_id="crashes")
    with pytest.raises(ServerDied) as info:
        executor.start()
    error = info.value
    assert error.returncode == 3 and error.signal is None
    assert error.log_path == str(tmp_path / "logs" / "stub.log")
    assert error.model_id == "crashes"
    assert "stub server died before it was ready" in str(error)
    assert gone(executor.proc.pid)  # type: ignore[union-attr]


def test_a_stall_is_a_start_timeout_and_nothing_is_left(tmp_path: Path) -> None:
    executor, _url = stub(tmp_path, "--mode", "stall", deadline_s=30, stall_timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(ServerStartTimeout) as info:
        executor.start()
    assert time.monotonic() - started < 20  # the stall timer, not the deadline, ended it
    assert info.value.stalled is True and info.value.waited_s is not None
    assert info.value.log_path == str(tmp_path / "logs" / "stub.log")
    assert info.value.model_id is None  # not a model's server
    assert gone(executor.proc.pid)  # type: ignore[union-attr]


def test_the_deadline_ends_a_server_that_logs_but_never_gets_ready(tmp_path: Path) -> None:
    executor, _url = stub(tmp_path, "--mode", "slow", "--delay", "60", deadline_s=1.5)
    with pytest.raises(ServerStartTimeout) as info:
        executor.start()
    assert info.value.stalled is False and "was not ready after" in str(info.value)
    assert gone(executor.proc.pid)  # type: ignore[union-attr]


def test_a_failed_pre_start_check_launches_nothing(tmp_path: Path) -> None:
    def port_taken() -> None:
        raise PortInUse("port 1 is taken", host="127.0.0.1", port=1)

    executor, _url = stub(tmp_path, pre_start=port_taken)
    with pytest.raises(PortInUse) as info:
        executor.start()
    assert info.value.port == 1
    assert executor.proc is None and not (tmp_path / "logs" / "stub.log").exists()
    assert executor.stop() == []  # nothing to stop


def test_ctrl_c_during_the_wait_stops_what_was_launched(tmp_path: Path) -> None:
    calls = []

    def interrupted() -> bool:
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return False

    executor = Executor([sys.executable, str(STUB), "--port", str(ephemeral_port()),
                         "--mode", "slow", "--delay", "60"], tmp_path / "stub.log",
                        check=interrupted, what="stub server")
    with pytest.raises(KeyboardInterrupt):
        executor.start()
    assert gone(executor.proc.pid)  # type: ignore[union-attr]

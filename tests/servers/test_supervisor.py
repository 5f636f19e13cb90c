"""The supervisor: rows keyed by (kind, name) ↔ real processes (the stub server), a real
StateStore in a tmp home."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from owllm.errors import ServerDied
from owllm.paths import Home
from owllm.servers.executor import Executor
from owllm.servers.ports import ephemeral_port
from owllm.servers.process import probe_health
from owllm.servers.supervisor import Supervisor
from owllm.state_store import MODEL_KIND, TOOLS_KIND, ServerStatus, now_iso
from tests.procs import gone

STUB = Path(__file__).with_name("stub_server.py")


@pytest.fixture
def supervisor(tmp_home: Path) -> Any:
    sup = Supervisor(Home(tmp_home).ensure())
    yield sup
    for kind, name in list(sup.executors):
        sup.stop(kind, name)


def launch_stub(sup: Supervisor, kind: str, name: str, *args: str) -> dict[str, Any]:
    port = ephemeral_port()
    url = f"http://127.0.0.1:{port}"
    executor = Executor([sys.executable, str(STUB), "--port", str(port), *args],
                        sup.home.logs_dir / f"{kind}-{name}.log",
                        check=lambda: probe_health(url), what=f"{kind} {name}",
                        model_id=name if kind == MODEL_KIND else None)
    record = {"status": ServerStatus.STARTING, "host": "127.0.0.1", "port": port,
              "url": url, "started_at": now_iso()}
    return sup.run(kind, name, executor, record=record,
                   ready=lambda: {"extra": {"note": "ready"}})


def test_run_records_identity_token_and_children_then_stop_ends_the_tree(
        supervisor: Supervisor) -> None:
    row = launch_stub(supervisor, MODEL_KIND, "m", "--children")
    assert row["status"] == ServerStatus.RUNNING and row["healthy"] is True
    assert row["kind"] == "model" and row["model_id"] == "m"
    assert row["pid"] and row["pgid"] == row["pid"] and row["pid_create_time"]
    extra = row["extra"]
    assert extra["token"] and extra["note"] == "ready" and extra["startup_s"] >= 0
    assert extra["children"], "the descendants at readiness are recorded"
    children = [int(c[0]) for c in extra["children"]]
    stopped = supervisor.stop(MODEL_KIND, "m")
    assert stopped is not None and stopped["status"] == ServerStatus.STOPPED
    assert gone(row["pid"]) and all(gone(pid) for pid in children)
    events = [e["status"] for e in reversed(supervisor.store.list_events(subject="m"))]
    assert events == ["STARTING", "RUNNING", "STOPPED"]


def test_a_failed_start_is_recorded_failed_with_the_typed_error(
        supervisor: Supervisor) -> None:
    with pytest.raises(ServerDied) as info:
        launch_stub(supervisor, MODEL_KIND, "crashes", "--mode", "exit")
    assert info.value.returncode == 3 and info.value.model_id == "crashes"
    row = supervisor.store.get_server("crashes")
    assert row is not None and row["status"] == ServerStatus.FAILED
    assert "died before it was ready" in row["last_error"] and gone(row["pid"])


def test_same_name_in_two_kinds_are_two_servers(supervisor: Supervisor) -> None:
    """A model called ``tool-server`` and the tool server: two rows, two processes; one's
    stop and reconcile never touch the other."""
    model = launch_stub(supervisor, MODEL_KIND, "tool-server")
    tools = launch_stub(supervisor, TOOLS_KIND, "tool-server")
    assert model["pid"] != tools["pid"] and model["url"] != tools["url"]
    store = supervisor.store
    assert store.get_server("tool-server")["pid"] == model["pid"]  # type: ignore[index]
    assert store.get_server("tool-server", kind=TOOLS_KIND)["pid"] == tools["pid"]  # type: ignore[index]
    supervisor.stop(TOOLS_KIND, "tool-server")
    assert gone(tools["pid"]) and not gone(model["pid"])
    again = supervisor.reconcile(MODEL_KIND, "tool-server")
    assert again is not None and again["status"] == ServerStatus.RUNNING and again["healthy"]
    assert {(r["kind"], r["model_id"], r["status"]) for r in store.list_servers()} == {
        ("model", "tool-server", "RUNNING"), ("tools", "tool-server", "STOPPED")}
    assert [e["subject"] for e in store.list_events(status="STOPPED")] == ["tools:tool-server"]


def test_a_killed_server_reconciles_as_crashed(supervisor: Supervisor) -> None:
    row = launch_stub(supervisor, MODEL_KIND, "m")
    os.kill(row["pid"], signal.SIGKILL)
    supervisor.executors[(MODEL_KIND, "m")].proc.wait()  # type: ignore[union-attr]
    seen = supervisor.reconcile(MODEL_KIND, "m")
    assert seen is not None and seen["status"] == ServerStatus.CRASHED
    assert seen["healthy"] is False and "process is gone" in seen["last_error"]


def test_ensure_reuses_a_healthy_server_and_starts_a_missing_one(
        supervisor: Supervisor) -> None:
    starts: list[int] = []

    def start() -> dict[str, Any]:
        starts.append(1)
        return launch_stub(supervisor, MODEL_KIND, "m")

    first, reused = supervisor.ensure(MODEL_KIND, "m", start, what="m", busy_hint="")
    assert reused is False and len(starts) == 1
    second, reused = supervisor.ensure(MODEL_KIND, "m", start, what="m", busy_hint="")
    assert reused is True and second["pid"] == first["pid"] and len(starts) == 1
    supervisor.stop(MODEL_KIND, "m")
    deadline = time.monotonic() + 5
    while not gone(first["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    third, reused = supervisor.ensure(MODEL_KIND, "m", start, what="m", busy_hint="")
    assert reused is False and third["pid"] != first["pid"] and len(starts) == 2


def test_a_starting_row_whose_starter_died_before_launch_reads_stopped(
        supervisor: Supervisor) -> None:
    supervisor.store.upsert_server("m", status=ServerStatus.STARTING, port=1)
    row = supervisor.reconcile(MODEL_KIND, "m")
    assert row is not None and row["status"] == ServerStatus.STOPPED
    assert "interrupted before the server launched" in row["last_error"]

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil
import pytest

from owllm.errors import ServerError, ServerStartTimeout
from owllm.servers.manager import LLMServerManager
from tests.procs import gone
from tests.servers.conftest import StubBackend, make_config, make_manager


def events(manager: LLMServerManager, model_id: str) -> list[str]:
    return [e["status"] for e in reversed(manager.store.list_events(kind="server",
                                                                   subject=model_id))]


def test_start_records_pid_port_status_and_reuses_running(manager: LLMServerManager) -> None:
    row = manager.start_server("ok")
    assert row["status"] == "RUNNING" and row["healthy"] is True
    assert row["port"] == 10599  # the hint, free here
    assert psutil.Process(row["pid"]).is_running()
    assert httpx.get(f"{row['url']}/health").status_code == 200
    assert events(manager, "ok") == ["STARTING", "RUNNING"]
    registered = manager.store.get_model("ok")
    assert registered is not None and registered["env_key"] == "system-python"
    again = manager.start_server("ok")
    assert again["pid"] == row["pid"] and again["port"] == row["port"]
    assert (manager.home.logs_dir / "ok.log").read_text().count("stub: listening") == 1


def test_port_hint_taken_gets_another_port(tmp_path: Path, tmp_home: Path,
                                           stub_backend: StubBackend) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        hint = taken.getsockname()[1]
        manager = make_manager(make_config(tmp_path, port_hint=hint))
        try:
            row = manager.start_server("ok")
            assert row["port"] != hint and row["status"] == "RUNNING"
        finally:
            manager.stop_all()


def test_concurrent_starts_of_one_model_give_one_server(tmp_path: Path, tmp_home: Path,
                                                        stub_backend: StubBackend) -> None:
    config = make_config(tmp_path)
    managers = [make_manager(config) for _ in range(3)]
    rows: list[dict] = []
    threads = [threading.Thread(target=lambda m=m: rows.append(m.start_server("slow")))
               for m in managers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert len(rows) == 3 and len({r["pid"] for r in rows}) == 1
        assert events(managers[0], "slow").count("STARTING") == 1
    finally:
        managers[0].stop_all()


def test_four_models_at_once_get_four_ports(tmp_path: Path, tmp_home: Path,
                                            stub_backend: StubBackend) -> None:
    config = make_config(tmp_path)
    rows: dict[str, dict] = {}

    def start(model_id: str) -> None:
        rows[model_id] = make_manager(config).start_server(model_id)

    threads = [threading.Thread(target=start, args=(m,)) for m in ("ok", "ok2", "ok3", "ok4")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert len({r["port"] for r in rows.values()}) == 4
        assert all(r["status"] == "RUNNING" for r in rows.values())
    finally:
        make_manager(config).stop_all()


def test_early_exit_fails_at_once_with_exit_code_and_log(manager: LLMServerManager) -> None:
    started = time.monotonic()
    with pytest.raises(ServerError) as info:
        manager.start_server("crashes")
    assert time.monotonic() - started < 10
    assert "exited with code 3" in str(info.value)
    assert "failing on purpose: missing weights" in str(info.value)
    row = manager.store.get_server("crashes")
    assert row["status"] == "FAILED" and "exited with code 3" in row["last_error"]


def test_stall_timer_kills_the_group(manager: LLMServerManager) -> None:
    with pytest.raises(ServerStartTimeout, match="made no progress for 2s"):
        manager.start_server("stalls")
    row = manager.store.get_server("stalls")
    assert row["status"] == "FAILED" and gone(row["pid"])


def test_overall_deadline_even_while_logging(manager: LLMServerManager) -> None:
    with pytest.raises(ServerStartTimeout, match="was not ready after 2s"):
        manager.start_server("never")


def test_health_alone_is_not_ready_when_backend_needs_a_completion(
        manager: LLMServerManager, stub_backend: StubBackend) -> None:
    """vLLM's /health answered 200 while its engine was dead: readiness must generate."""
    stub_backend.ready_needs_completion = True
    with pytest.raises(ServerStartTimeout):
        manager.start_server("lying")
    stub_backend.ready_needs_completion = False
    assert manager.start_server("lying")["status"] == "RUNNING"


def test_kill_9_of_server_is_crashed_and_restart_works(manager: LLMServerManager) -> None:
    row = manager.start_server("ok")
    os.kill(row["pid"], signal.SIGKILL)
    manager._children["ok"].wait()
    status = manager.status("ok")[0]
    assert status["status"] == "CRASHED" and status["healthy"] is False
    again = manager.start_server("ok")
    assert again["status"] == "RUNNING" and again["pid"] != row["pid"]


def test_stop_kills_the_whole_tree(manager: LLMServerManager) -> None:
    row = manager.start_server("tree")
    deadline = time.monotonic() + 10
    while len(psutil.Process(row["pid"]).children(recursive=True)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    tree = [psutil.Process(row["pid"]), *psutil.Process(row["pid"]).children(recursive=True)]
    manager.stop_server("tree")
    for proc in tree:
        assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    assert manager.store.get_server("tree")["status"] == "STOPPED"


def test_reused_pid_reads_as_gone(manager: LLMServerManager) -> None:
    row = manager.start_server("ok")
    manager.stop_server("ok")
    # Another program now holds "our" pid: same pid number, different create time.
    manager.store.upsert_server("ok", status="RUNNING", pid=os.getpid(),
                                pid_create_time=row["pid_create_time"])
    assert manager.status("ok")[0]["status"] == "CRASHED"


def test_port_answered_by_someone_else_is_flagged(manager: LLMServerManager) -> None:
    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    other = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    try:
        port = other.server_address[1]
        manager.store.upsert_server("ok", status="RUNNING", pid=999_999, pgid=999_999,
                                    pid_create_time=1.0, port=port, host="127.0.0.1",
                                    url=f"http://127.0.0.1:{port}")
        row = manager.status("ok")[0]
        assert row["status"] == "CRASHED" and "not from our process" in row["port_conflict"]
    finally:
        other.shutdown()


MANAGER_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from tests.servers.conftest import StubBackend, make_manager
    import owllm.servers.manager as m
    m.get_backend = lambda name: StubBackend()
    manager = make_manager({config!r})
    print(manager.start_server({model!r})["pid"], flush=True)
    time.sleep(600)
""")


@pytest.mark.parametrize("model_id", ["ok", "slow"])
def test_kill_9_of_the_managing_process_then_status_reconciles(
        tmp_path: Path, tmp_home: Path, stub_backend: StubBackend, model_id: str) -> None:
    config = make_config(tmp_path)
    root = str(Path(__file__).resolve().parents[2])
    script = MANAGER_SCRIPT.format(root=root, config=str(config), model=model_id)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    manager = make_manager(config)
    try:
        if model_id == "ok":
            pid = int(proc.stdout.readline())  # type: ignore[union-attr]
        else:  # killed while the server is still STARTING
            deadline = time.monotonic() + 20
            while not (manager.store.get_server(model_id) or {}).get("pid"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 20
        while (row := manager.status(model_id)[0])["status"] != "RUNNING":
            assert row["status"] == "STARTING" and time.monotonic() < deadline
            time.sleep(0.1)
        assert row["healthy"] is True
        if model_id == "ok":
            assert row["pid"] == pid
    finally:
        proc.kill()
        manager.stop_all()
    assert manager.store.get_server(model_id)["status"] == "STOPPED"
    assert gone(row["pid"])

"""A busy server is not killed as unhealthy.

Under load a server's ``/health`` can take longer than one probe's timeout.  Another
``server start``, an xdist worker or the pytest fixture then saw "RUNNING but unhealthy" and
replaced the server: killed it mid-request.  Now a live server of ours whose port accepts
connections is waited for and reused; only one that is dead, or alive but answering
nothing for a grace period, is replaced.  Real processes (the stub server's ``busy`` and
``deaf`` modes), real ports, a real StateStore.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

import owllm.servers.supervisor
from owllm.errors import ServerError
from owllm.servers.manager import LLMServerManager
from tests.procs import gone
from tests.servers.conftest import StubBackend, make_manager

CONFIG = """
models:
  busy: {base_model: stub, server_args: ["--mode", "busy", "--health-delay", "3"]}
  deaf: {base_model: stub, server_args: ["--mode", "deaf"]}
"""


@pytest.fixture
def config(tmp_path: Path, tmp_home: Path, stub_backend: StubBackend) -> Path:
    path = tmp_path / "configs" / "llm_backends.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(CONFIG)
    return path


def events(manager: LLMServerManager, model_id: str) -> list[str]:
    return [e["status"] for e in reversed(manager.store.list_events(kind="server",
                                                                   subject=model_id))]


def test_second_start_reuses_a_server_whose_health_is_slow(config: Path) -> None:
    first = make_manager(config)
    row = first.start_server("busy")  # its later /health calls take 3 s (2 s probe timeout)
    try:
        other = make_manager(config)  # another worker, another `owllm server start`
        seen = other.reconcile("busy")
        assert seen is not None and seen["healthy"] is False  # what used to trigger the kill
        again = other.start_server("busy")
        assert again["pid"] == row["pid"] and again["status"] == "RUNNING"
        assert psutil.Process(row["pid"]).is_running() and not gone(row["pid"])
        assert events(other, "busy") == ["STARTING", "RUNNING"]  # never stopped
    finally:
        first.stop_all()


def test_a_server_busy_past_the_bound_is_left_running_with_a_clear_error(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(owllm.servers.supervisor, "BUSY_WAIT_S", 1.0)
    monkeypatch.setattr(owllm.servers.supervisor, "BUSY_PROBE_TIMEOUT_S", 0.5)
    first = make_manager(config)
    row = first.start_server("busy")
    try:
        with pytest.raises(ServerError) as info:
            make_manager(config).start_server("busy")
        assert "left running" in str(info.value) and "server restart busy" in str(info.value)
        assert not gone(row["pid"])
        assert (first.store.get_server("busy") or {}).get("status") == "RUNNING"
    finally:
        first.stop_all()


def test_a_live_server_that_answers_nothing_is_replaced_after_a_grace_period(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(owllm.servers.supervisor, "SILENT_GRACE_S", 1.0)
    first = make_manager(config)
    row = first.start_server("deaf")  # after its first /health it stops listening
    try:
        again = make_manager(config).start_server("deaf")
        assert again["pid"] != row["pid"] and again["status"] == "RUNNING"
        assert gone(row["pid"])
    finally:
        first.stop_all()

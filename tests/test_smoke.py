"""``owllm.smoke``: ``serving()`` holds a server for a block and stops only what it started;
the smoke results are dataclasses whose ``to_dict()`` is the guide's JSON.  The servers are
the stub of tests/servers, started through the real manager."""

from __future__ import annotations

from typing import Any

import pytest

from owllm import capabilities
from owllm._smoke_results import EnvTestResult, ModelSmokeResult, ToolsSmokeResult, error_entry
from owllm.capabilities import CHECKS
from owllm.errors import ServerDied, ServerError
from owllm.servers.manager import LLMServerManager
from owllm.smoke import complete_capabilities, model_smoke, serving
from tests.procs import gone
from tests.servers.conftest import manager, stub_backend

__all__ = ["manager", "stub_backend"]  # fixtures, used below

MODEL_KEYS = ["model_id", "status", "backend", "server_started", "health_ok", "generate_ok",
              "errors", "env_key", "port", "startup_s", "first_token_s", "tokens_per_s",
              "capabilities", "dtype", "dtype_reason", "kernels", "ladder", "runaway"]
TOOLS_KEYS = ["model_id", "status", "server_started", "tool_server_ok", "tool_call_detected",
              "tool_executed", "final_answer_ok", "errors", "call", "result", "constrained",
              "capabilities", "ladder", "runaway"]


def test_serving_stops_only_what_it_started(manager: LLMServerManager) -> None:
    with serving(manager, "ok") as served:
        assert served.row["status"] == "RUNNING" and not served.was_running
        assert served.startup_s > 0
        pid = served.row["pid"]
    assert manager.store.get_server("ok")["status"] == "STOPPED" and gone(pid)

    manager.start_server("ok")  # someone else's server: reused, never stopped
    with serving(manager, "ok") as served:
        assert served.was_running and served.startup_s == 0.0
    assert manager.reconcile("ok")["status"] == "RUNNING"


def test_serving_keep_hands_the_server_over(manager: LLMServerManager) -> None:
    with serving(manager, "ok2", keep=True):
        pass
    assert manager.reconcile("ok2")["status"] == "RUNNING"


def test_a_failed_start_raises_before_the_block(manager: LLMServerManager) -> None:
    with pytest.raises(ServerError), serving(manager, "crashes"):
        pytest.fail("the block ran without a server")


def test_smoke_of_a_dead_server_carries_the_typed_fields(manager: LLMServerManager) -> None:
    result = model_smoke(manager, "crashes")
    assert isinstance(result, ModelSmokeResult) and not result.passed
    data = result.to_dict()
    assert list(data) == MODEL_KEYS  # never started: no reused_running_server, no log_tail
    error = data["errors"][0]
    assert error["stage"] == "start" and error["type"] == "ServerDied"
    assert {"model_id", "returncode", "signal", "process"} <= set(error)
    assert error["log_path"].endswith("crashes.log")
    assert result["status"] == "FAIL" and result.get("sample") is None  # reads like the JSON


def test_error_entry_adds_the_fields_of_any_owllm_error() -> None:
    died = ServerDied("died", model_id="m", log_path="/l", returncode=-4, signal="SIGILL",
                      process="worker")
    assert error_entry("start", died) == {
        "stage": "start", "type": "ServerDied", "message": str(died), "model_id": "m",
        "log_path": "/l", "returncode": -4, "signal": "SIGILL", "process": "worker"}
    assert error_entry("generate", ValueError("x")) == {
        "stage": "generate", "type": "ValueError", "message": "x"}


def test_results_are_the_guides_json() -> None:
    model = ModelSmokeResult("m", reused_running_server=False, sample="hi", log_tail="")
    assert list(model.to_dict()) == [*MODEL_KEYS, "reused_running_server", "sample",
                                     "log_tail"]
    tools = ToolsSmokeResult("m", model_output="{}", final_answer="ok")
    assert list(tools.to_dict()) == [*TOOLS_KEYS, "model_output", "final_answer"]
    assert list(ToolsSmokeResult("m").to_dict()) == TOOLS_KEYS


def test_env_result_is_the_probes_json_without_packages() -> None:
    probe: dict[str, Any] = {
        "env_key": "k", "status": "PASS", "python_path": "/p", "python_version": "3.11.9",
        "torch_version": None, "cuda_available": None, "versions": {"a": "1"}, "errors": [],
        "drift": [], "packages": {"a": "1"}, "new_field": 1}
    result = EnvTestResult.from_probe(probe)
    assert result.passed
    assert result.to_dict() == {k: v for k, v in probe.items() if k != "packages"}
    assert EnvTestResult("k", errors=[{"module": "<build>", "error": "e"}]).to_dict() == {
        "env_key": "k", "status": "FAIL", "python_path": None, "torch_version": None,
        "cuda_available": None, "errors": [{"module": "<build>", "error": "e"}]}


def test_smoke_capabilities_are_declared_with_the_probed_values_over_them(
        manager: LLMServerManager) -> None:
    """The stub answers every POST with a bare text choice: the start's probe records what
    that shows (completions yes; chat, streaming, tools no, each with its reason), and the
    smoke's ``capabilities`` are the backend's declared ones with those written over them."""
    data = model_smoke(manager, "ok3").to_dict()
    caps = data["capabilities"]
    assert caps["completions"] is True and caps["reasons"]["completions"]
    assert caps["chat"] is False and caps["reasons"]["chat"] == "the choice has no message"
    assert caps["streaming"] is False and caps["tools"] is False
    assert caps["unenforced_keywords"] == []  # declared, never probed: kept
    assert set(caps["reasons"]) == set(CHECKS) and "probe_s" in caps


def test_checks_a_start_left_unknown_are_probed_by_the_smoke(
        manager: LLMServerManager) -> None:
    row = manager.start_server("ok4")
    try:
        recorded = row["extra"]["capabilities"]
        assert recorded["completions"] is True
        unknown = {**recorded, "completions": None, "chat": None,
                   "reasons": {**recorded["reasons"], "completions": "late", "chat": "late"}}
        completed = complete_capabilities({**row, "extra": {**row["extra"],
                                                            "capabilities": unknown}})
        assert completed["completions"] is True and completed["chat"] is False
        assert completed["reasons"]["chat"] == "the choice has no message"
        assert capabilities.unknown(completed) == []
        # A row without a record (an older OWLLM started it, or its probe broke): all of it.
        bare = complete_capabilities({**row, "extra": {**row["extra"], "capabilities": {
            "error": "the capability probe failed: RuntimeError"}}})
        assert set(CHECKS) <= set(bare) and bare["completions"] is True
    finally:
        manager.stop_server("ok4")

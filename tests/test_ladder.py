"""The readiness ladder (owllm/servers/ladder.py) and runaway detection in the smoke JSON
(issue 17, parts 5 and 6).  Real processes on loopback started by the real manager
(tests/ladder_stub.py: servers whose /health says ok while something above it is broken),
a real tool server, and an attached endpoint (the conformance suite's in-thread stub)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from owllm._smoke_results import runaway_of
from owllm.cli import main
from owllm.servers import ladder as ladders
from owllm.servers.manager import LLMServerManager
from owllm.smoke import model_smoke, tools_smoke
from tests.conformance.stub_openai import StubOpenAI
from tests.procs import gone
from tests.servers.conftest import StubBackend, make_manager

STUB = Path(__file__).with_name("ladder_stub.py")
STEPS = ["process_alive", "port_open", "health", "model_listed", "one_token"]
RUNG_KEYS = {"step", "ok", "seconds"}  # and "detail" when there is one

CONFIG = """
models:
  good: {base_model: stub, server_args: ["--model", "good"]}
  lying: {base_model: stub, server_args: ["--mode", "lying", "--model", "lying"]}
  unlisted: {base_model: stub, server_args: ["--mode", "unlisted", "--model", "unlisted"]}
  deaf: {base_model: stub, server_args: ["--mode", "deaf", "--model", "deaf"]}
  loops: {base_model: stub, server_args: ["--mode", "runaway", "--model", "loops"],
          generation: {max_tokens: 24}}
  crashes: {base_model: stub, server_args: ["--mode", "no-such-mode", "--no-such-flag"]}
tool_server: {port: 0}
"""


class LadderStub(StubBackend):
    """Launches tests/ladder_stub.py instead of the supervision tests' stub."""

    def launch(self, model: Any, model_path: Any, ctx: Any, host: str, port: int) -> Any:
        spec = super().launch(model, model_path, ctx, host, port)
        return type(spec)(argv=(sys.executable, str(STUB), *spec.argv[2:]),
                          ready_needs_completion=False)


@pytest.fixture
def manager(tmp_path: Path, tmp_home: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[LLMServerManager]:
    backend = LadderStub()
    monkeypatch.setattr("owllm.servers.manager.get_backend", lambda name: backend)
    config = tmp_path / "configs" / "llm_backends.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(CONFIG)
    mgr = make_manager(config)
    yield mgr
    mgr.stop_all()


def steps(result: Any) -> list[tuple[str, bool | None]]:
    return [(r["step"], r["ok"]) for r in result["ladder"]]


def assert_rungs(ladder: list[dict[str, Any]], names: list[str]) -> None:
    """In order; every rung has its keys; a rung that ran has its seconds, one not run none."""
    assert [r["step"] for r in ladder] == names
    for rung in ladder:
        assert RUNG_KEYS <= set(rung) <= RUNG_KEYS | {"detail"}, rung
        if rung.get("detail", "").startswith("not run"):
            assert rung["ok"] is None and rung["seconds"] is None
        else:
            assert isinstance(rung["seconds"], float) and 0 <= rung["seconds"] < 30


def test_a_healthy_server_climbs_every_step(manager: LLMServerManager) -> None:
    result = model_smoke(manager, "good")
    assert result["status"] == "PASS", result["errors"]
    assert steps(result) == [(s, True) for s in STEPS]
    assert_rungs(result["ladder"], STEPS)
    pid = manager.store.get_server("good")["pid"]
    assert result["ladder"][0]["detail"] == f"pid {pid} (the server)"
    assert result["runaway"] is None


def test_a_lying_health_fails_at_the_one_token_step(manager: LLMServerManager) -> None:
    """/health and /v1/models answer, the engine does not (vLLM #39863's shape)."""
    result = model_smoke(manager, "lying")
    assert result["status"] == "FAIL" and result["health_ok"] is True  # the lie, visible
    assert steps(result) == [*[(s, True) for s in STEPS[:-1]], ("one_token", False)]
    assert "answered 500" in result["ladder"][-1]["detail"]
    assert result["errors"] == [{
        "stage": "ladder", "type": "ReadinessStepFailed", "step": "one_token",
        "message": "readiness step one_token failed: " + result["ladder"][-1]["detail"]}]
    assert result["generate_ok"] is False and result.get("log_tail") is not None


def test_a_model_not_listed_stops_the_climb(manager: LLMServerManager) -> None:
    result = model_smoke(manager, "unlisted")
    assert steps(result) == [("process_alive", True), ("port_open", True), ("health", True),
                             ("model_listed", False), ("one_token", None)]
    assert "['another-model'], not 'unlisted'" in result["ladder"][3]["detail"]
    assert result["ladder"][4]["detail"] == "not run: model_listed failed"
    assert_rungs(result["ladder"], STEPS)
    assert result["status"] == "FAIL" and result["errors"][0]["step"] == "model_listed"


def test_a_live_process_on_a_closed_port_fails_at_port_open(
        manager: LLMServerManager) -> None:
    result = model_smoke(manager, "deaf")
    assert steps(result)[:2] == [("process_alive", True), ("port_open", False)]
    assert "refuses connections" in result["ladder"][1]["detail"]
    assert all(r["ok"] is None for r in result["ladder"][2:])
    assert result["status"] == "FAIL"


def test_a_dead_pid_fails_at_process_alive(manager: LLMServerManager) -> None:
    row = manager.start_server("good")
    os.killpg(row["pgid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not gone(row["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    ladder = ladders.climb(row, chat=True).to_list()
    assert ladder[0]["ok"] is False and "not running" in ladder[0]["detail"]
    assert [r["detail"] for r in ladder[1:]] == ["not run: process_alive failed"] * 4
    assert_rungs(ladder, STEPS)


def test_a_server_that_never_started_climbed_nothing(manager: LLMServerManager) -> None:
    result = model_smoke(manager, "crashes")
    assert result["errors"][0]["stage"] == "start"
    assert [r["detail"] for r in result["ladder"]] == \
        ["not run: the server did not start"] * len(STEPS)
    assert_rungs(result["ladder"], STEPS)


def test_the_tools_smoke_adds_the_round_trip(manager: LLMServerManager) -> None:
    result = tools_smoke(manager, "good")
    assert result["status"] == "PASS", result["errors"]
    assert steps(result) == [(s, True) for s in [*STEPS, "tool_round_trip"]]
    assert_rungs(result["ladder"], [*STEPS, "tool_round_trip"])
    assert result["call"]["tool"] == "calculator" and result["result"] == 42
    assert result["runaway"] is None


def test_a_lying_server_never_reaches_the_round_trip(manager: LLMServerManager) -> None:
    result = tools_smoke(manager, "lying")
    assert steps(result)[-2:] == [("one_token", False), ("tool_round_trip", None)]
    assert result["status"] == "FAIL" and not result["tool_server_ok"]
    assert [e["step"] for e in result["errors"]] == ["one_token"]


def test_constrained_whitespace_padding_is_a_runaway_with_its_token_count(
        manager: LLMServerManager) -> None:
    result = tools_smoke(manager, "loops")
    assert result["status"] == "FAIL" and result["constrained"] is True
    assert result["runaway"] == {"kind": "whitespace", "completion_tokens": 96,
                                 "max_tokens": 96}
    error = result["errors"][0]
    assert (error["stage"], error["type"], error["completion_tokens"]) == ("parse", "runaway", 96)
    assert error["message"] == ("the constrained call padded whitespace until max_tokens "
                                "(96 of 96 tokens)")
    assert len(result["errors"]) == 1  # the loop, not a parse error on top of it
    assert steps(result)[-1] == ("tool_round_trip", False)
    assert result["ladder"][-1]["detail"] == f"runaway: {error['message']}"


def test_a_generation_that_repeats_until_max_tokens_is_a_runaway(
        manager: LLMServerManager) -> None:
    result = model_smoke(manager, "loops")
    assert result["status"] == "FAIL" and result["generate_ok"] is True
    assert result["runaway"] == {"kind": "repetition", "completion_tokens": 24,
                                 "max_tokens": 24}
    assert [(e["stage"], e["type"]) for e in result["errors"]] == [("generate", "runaway")]
    assert "repeated itself until max_tokens (24 of 24 tokens)" in result["errors"][0]["message"]


def test_runaway_needs_the_token_limit_and_a_loop() -> None:
    padded = '{"tool": "calculator"' + " " * 40
    assert runaway_of(padded, "length", 50, 50) == {
        "kind": "whitespace", "completion_tokens": 50, "max_tokens": 50}
    assert runaway_of(padded, "stop", 50, 50) is None  # ended on its own: not a loop
    assert runaway_of("Once upon a time there was a ship.", "length", 9, 9) is None
    # No finish reason: reaching max_tokens counts as the limit.
    assert runaway_of("ab" * 40, None, 64, 64)["kind"] == "repetition"  # type: ignore[index]
    assert runaway_of("ab" * 40, None, 10, 64) is None


def test_an_attached_endpoint_says_it_has_no_process(tmp_path: Path, tmp_home: Path) -> None:
    """backend remote: no local pid and no /health, said so (ok null), never faked; the
    climb goes on to /v1/models and the one-token completion."""
    with StubOpenAI(model="served-name") as endpoint:
        config = tmp_path / "configs" / "llm_backends.yaml"
        config.parent.mkdir(parents=True)
        config.write_text("models:\n  fleet: {backend: remote, base_url: "
                          f'"{endpoint.url}/v1", served_model: served-name}}\n')
        manager = make_manager(config)
        try:
            result = model_smoke(manager, "fleet")
        finally:
            manager.stop_all()
    assert result["status"] == "PASS", result["errors"]
    assert steps(result) == [("process_alive", None), ("port_open", True), ("health", None),
                             ("model_listed", True), ("one_token", True)]
    assert "no local process: backend remote" in result["ladder"][0]["detail"]
    assert "/v1/models" in result["ladder"][2]["detail"]
    assert_rungs(result["ladder"], STEPS)


def test_the_climb_names_what_an_endpoint_got_wrong() -> None:
    """The ladder alone, on a row: an endpoint that lists no model, then one whose
    completions route is missing (the conformance stub's faults)."""
    with StubOpenAI() as endpoint:
        row = {"url": endpoint.url, "model_id": "m",
               "extra": {"managed": False, "served_model": "stub-model"}}
        endpoint.faults = {"models_missing"}
        ladder = ladders.climb(row, chat=False)
        assert ladder.failed is not None and ladder.failed.step == "model_listed"
        assert ladder.failed.detail == "/v1/models lists [], not 'stub-model'"
        endpoint.faults = {"completions_404"}
        ladder = ladders.climb(row, chat=False)
        assert ladder.failed is not None and ladder.failed.step == "one_token"
        assert (ladder.failed.detail or "").startswith("/v1/completions answered 404")
        endpoint.faults = set()
        assert ladders.climb(row, chat=False).failed is None


def test_smoke_all_names_the_step_that_failed(manager: LLMServerManager, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "two" / "configs" / "llm_backends.yaml"
    config.parent.mkdir(parents=True)
    config.write_text('models:\n  good: {base_model: stub, server_args: ["--model", "good"]}\n'
                      '  lying: {base_model: stub, server_args: ["--mode", "lying", '
                      '"--model", "lying"]}\n')
    two = make_manager(config)
    monkeypatch.setattr("owllm.cli.model.manager_for", lambda ctx: two)
    try:
        code = main(["model", "smoke", "--all", "--config", str(config), "--json"])
    finally:
        two.stop_all()
    out, err = capsys.readouterr()
    assert code == 1 and json.loads(out)["failed"] == ["lying"]
    assert "owllm: smoke good: PASS\n" in err
    assert "owllm: smoke lying: FAIL (readiness step one_token failed)" in err


def test_behind_a_proxy_the_port_step_says_it_cannot_look(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A remote host reached through $HTTP_PROXY: no direct TCP check is possible, so
    port_open is null with the reason, and /v1/models (through the proxy) decides."""
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # discard port: refused
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    row = {"url": "http://models.example.invalid:8000", "model_id": "m",
           "extra": {"managed": False, "served_model": "m", "timeout_s": 5}}
    ladder = ladders.climb(row, chat=True, backend="remote", timeout=5).to_list()
    assert [(r["step"], r["ok"]) for r in ladder] == [
        ("process_alive", None), ("port_open", None), ("health", None),
        ("model_listed", False), ("one_token", None)]
    assert "through the environment's proxy" in ladder[1]["detail"]
    assert ladder[3]["detail"].startswith(("ProxyError", "ConnectError"))

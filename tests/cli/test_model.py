"""The README's main job, run exactly as a user runs it (fresh home): `owllm model smoke demo`
and `owllm tools smoke demo` print the guide's JSON and stop what they started."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import gone

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "owllm", *args], capture_output=True,
                          text=True, timeout=600, cwd=REPO)


def test_model_and_tools_smoke_of_the_demo_model(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    model = run("model", "smoke", "demo", "--home", home, "--json")
    assert model.returncode == 0, model.stdout + model.stderr
    result = json.loads(model.stdout)
    assert {k: result[k] for k in ("model_id", "status", "server_started", "health_ok",
                                   "generate_ok", "errors")} == {
        "model_id": "demo", "status": "PASS", "server_started": True, "health_ok": True,
        "generate_ok": True, "errors": []}
    assert result["startup_s"] > 0 and result["tokens_per_s"] > 0
    assert 0 < result["first_token_s"] < 30
    # The readiness ladder, climbed in order on the real server, each step timed.
    assert [(r["step"], r["ok"]) for r in result["ladder"]] == [
        (s, True) for s in ("process_alive", "port_open", "health", "model_listed", "one_token")]
    assert all(0 <= r["seconds"] < 30 for r in result["ladder"])
    assert result["runaway"] is None

    tools = run("tools", "smoke", "demo", "--home", home, "--json")
    assert tools.returncode == 0, tools.stdout + tools.stderr
    outcome = json.loads(tools.stdout)
    assert {k: outcome[k] for k in ("model_id", "status", "server_started", "tool_server_ok",
                                    "tool_call_detected", "tool_executed", "errors")} == {
        "model_id": "demo", "status": "PASS", "server_started": True, "tool_server_ok": True,
        "tool_call_detected": True, "tool_executed": True, "errors": []}
    assert outcome["call"]["tool"] == "calculator"
    assert [(r["step"], r["ok"]) for r in outcome["ladder"]][-1] == ("tool_round_trip", True)
    assert outcome["runaway"] is None
    assert isinstance(outcome["result"], (int, float))

    status = json.loads(run("server", "status", "--home", home, "--json").stdout)
    assert [s["status"] for s in status] == ["STOPPED"]  # the smokes stopped their servers
    assert gone(status[0]["pid"])


def test_smoke_all_reports_every_model_and_fails_if_one_does(tmp_path: Path) -> None:
    config = tmp_path / "configs" / "llm_backends.yaml"
    config.parent.mkdir()
    config.write_text(
        "models:\n"
        "  demo:\n    base_model: \"demo://tiny-llama\"\n    device: cpu\n"
        "    generation: {max_tokens: 4}\n"
        f"  broken:\n    base_model: \"{tmp_path / 'no-such-model'}\"\n    device: cpu\n")
    result = run("model", "smoke", "--all", "--config", str(config), "--home",
                 str(tmp_path / "home"), "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "FAIL" and data["failed"] == ["broken"]
    assert [(r["model_id"], r["status"]) for r in data["results"]] == [
        ("demo", "PASS"), ("broken", "FAIL")]
    assert "owllm: smoke broken: FAIL" in result.stderr


@pytest.mark.parametrize("args", [("model", "smoke"), ("model", "smoke", "demo", "--all")])
def test_smoke_needs_one_model_or_all(args: tuple[str, ...]) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert "give a MODEL_ID or --all (not both)" in result.stderr
    error = json.loads(result.stdout)["error"]  # not a terminal: the error as JSON too
    assert error["type"] == "UsageError" and "demo-vllm" in error["hint"]

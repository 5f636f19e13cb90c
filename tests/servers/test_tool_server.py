"""The managed tool server through the CLI: serve (port 0) → status → stop, reuse, crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil

from owllm.paths import Home
from owllm.servers.tool_server import tool_server_status
from tests.procs import gone


def owllm(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "owllm", "--home", str(home), *args, "--json"],
                          capture_output=True, text=True, timeout=120, cwd=home)


def test_serve_status_stop_round_trip(tmp_home: Path) -> None:
    served = owllm(tmp_home, "tools", "serve", "--port", "0")
    assert served.returncode == 0, served.stderr
    info = json.loads(served.stdout)
    assert info["url"].startswith("http://127.0.0.1:") and info["reused"] is False
    assert httpx.get(info["url"] + "/health").status_code == 200
    call = {"tool": "calculator", "args": {"expression": "42*17"}, "id": "c1"}
    reply = httpx.post(info["url"] + "/call", json=call).json()
    assert (reply["id"], reply["result"]) == ("c1", 714)

    again = json.loads(owllm(tmp_home, "tools", "serve", "--port", "0").stdout)
    assert again["pid"] == info["pid"] and again["reused"] is True

    status = json.loads(owllm(tmp_home, "tools", "status").stdout)
    assert status["status"] == "RUNNING" and status["healthy"] is True

    stopped = json.loads(owllm(tmp_home, "tools", "stop").stdout)
    assert stopped["status"] == "STOPPED" and gone(info["pid"])
    assert json.loads(owllm(tmp_home, "tools", "status").stdout)["status"] == "STOPPED"


def test_killed_tool_server_reads_as_crashed_and_restarts(tmp_home: Path) -> None:
    info = json.loads(owllm(tmp_home, "tools", "serve", "--port", "0").stdout)
    os.kill(info["pid"], signal.SIGKILL)
    psutil.wait_procs([p for p in psutil.process_iter() if p.pid == info["pid"]], timeout=5)
    row = tool_server_status(Home(tmp_home))
    assert row is not None and row["status"] == "CRASHED" and row["healthy"] is False
    restarted = json.loads(owllm(tmp_home, "tools", "serve", "--port", "0").stdout)
    assert restarted["pid"] != info["pid"] and restarted["reused"] is False
    owllm(tmp_home, "tools", "stop")


def test_config_tools_are_served(tmp_path: Path, tmp_home: Path) -> None:
    (tmp_path / "mytools.py").write_text(
        "def shout(text: str) -> str:\n    return text.upper()\n")
    config = tmp_path / "configs" / "llm_backends.yaml"
    config.parent.mkdir()
    config.write_text("models: {}\ntools:\n  - callable: mytools:shout\n    parameters:\n"
                      "      type: object\n      properties: {text: {type: string}}\n"
                      "      required: [text]\n")
    served = owllm(tmp_home, "--config", str(config), "tools", "serve", "--port", "0")
    assert served.returncode == 0, served.stderr
    url = json.loads(served.stdout)["url"]
    try:
        names = [t["function"]["name"] for t in httpx.get(url + "/tools").json()["tools"]]
        assert "shout" in names and "calculator" in names
        reply = httpx.post(url + "/call", json={"tool": "shout", "args": {"text": "hi"},
                                                "id": "1"})
        assert reply.json()["result"] == "HI"
    finally:
        owllm(tmp_home, "tools", "stop")


def test_a_run_owns_the_tool_server_it_launches_and_stops_it_at_its_end(
        tmp_home: Path) -> None:
    """Owned from before the launch (the owner row of kind ``tools``), stopped by the run's
    end through the supervisor's stop path; a reused one is not the run's."""
    from owllm.servers.owners import Owner
    from owllm.servers.tool_server import KIND, NAME, start_tool_server, stop_tool_server
    from owllm.state_store import StateStore

    home = Home(tmp_home)
    owner = Owner.new("api")
    try:
        row = start_tool_server(home, port=0, owner=owner)
        assert row["reused"] is False and row["kind"] == KIND and row["model_id"] == NAME
        store = StateStore(home.state_db)
        claimed = store.get_server_owner(NAME, kind=KIND)
        assert claimed is not None and claimed["run_id"] == owner.run_id
        assert store.get_server_owner(NAME) is None  # a model's row of that name: none

        other = Owner.new("api")
        again = start_tool_server(home, port=0, owner=other)  # reused: stays the first run's
        assert again["reused"] is True and again["pid"] == row["pid"]
        assert (store.get_server_owner(NAME, kind=KIND) or {})["run_id"] == owner.run_id
        other.close()

        assert owner.end() == ["tools:tool-server"]
        assert gone(row["pid"])
        assert (tool_server_status(home) or {})["status"] == "STOPPED"
    finally:
        owner.close()
        stop_tool_server(home)

"""``owllm server start|logs|status|stop`` (:mod:`owllm.cli.server`) on the demo model, run as a
user runs them (fresh home)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.procs import gone

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "owllm", *args], capture_output=True,
                          text=True, timeout=600, cwd=REPO)


def test_server_start_logs_stop(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    started = run("server", "start", "demo", "--home", home, "--json")
    assert started.returncode == 0, started.stderr
    row = json.loads(started.stdout)
    try:
        assert row["status"] == "RUNNING" and psutil.pid_exists(row["pid"])
        logs = run("server", "logs", "demo", "--home", home)
        assert "owllm-server: ready" in logs.stdout
        listed = json.loads(run("server", "status", "--home", home, "--json").stdout)
        assert [(s["model_id"], s["status"], s["healthy"]) for s in listed] == [
            ("demo", "RUNNING", True)]
    finally:
        stopped = json.loads(run("server", "stop", "demo", "--home", home, "--json").stdout)
    assert stopped["status"] == "STOPPED" and gone(row["pid"])

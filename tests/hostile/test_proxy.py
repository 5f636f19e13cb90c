"""Proxies break loopback: with HTTP_PROXY pointing at a dead port (a corporate machine's
setting), OWLLM's own probes and clients must still reach the servers it runs on
127.0.0.1, and a remote URL keeps the environment's proxy settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from owllm import httpclient
from tests.servers.conftest import make_config, make_manager

DEAD_PROXY = "http://127.0.0.1:9"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
              "all_proxy")


@pytest.fixture
def dead_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.setenv(name, DEAD_PROXY)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)


def test_model_server_start_and_probes_bypass_the_proxy(dead_proxy: None, tmp_path: Path,
                                                         tmp_home: Path, stub_backend: Any) -> None:
    stub_backend.ready_needs_completion = True  # the completion probe goes over HTTP too
    manager = make_manager(make_config(tmp_path))
    try:
        started = time.monotonic()
        row = manager.start_server("ok")
        assert row["status"] == "RUNNING" and time.monotonic() - started < 15
        assert manager.reconcile("ok")["healthy"] is True
        answer = httpclient.post(row["url"] + "/v1/completions", json={"prompt": "x"})
        assert answer.status_code == 200
    finally:
        manager.stop_all()


def test_tool_server_cli_starts_behind_a_dead_proxy(tmp_path: Path, tmp_home: Path) -> None:
    env = {**os.environ, "OWLLM_HOME": str(tmp_home), "NO_PROXY": "", "no_proxy": "",
           **dict.fromkeys(PROXY_VARS, DEAD_PROXY)}

    def owllm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "owllm.cli", *args, "--json"], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=90)

    try:
        started = time.monotonic()
        served = owllm("tools", "serve", "--port", "0")
        assert served.returncode == 0, served.stderr
        assert time.monotonic() - started < 30
        url = json.loads(served.stdout)["url"]
        status = owllm("tools", "status")
        assert json.loads(status.stdout)["healthy"] is True, status.stdout
        assert httpclient.get(url + "/health").status_code == 200
    finally:
        owllm("tools", "stop")


@pytest.mark.parametrize(("url", "loopback"), [
    ("http://127.0.0.1:8000/v1", True), ("http://127.8.9.10", True),
    ("http://localhost:1", True), ("http://[::1]:80/", True),
    ("https://api.example.com/v1", False), ("http://10.0.0.1:8000", False),
    ("http://localhost.evil.example", False),
])
def test_only_loopback_urls_skip_the_environment(url: str, loopback: bool) -> None:
    assert httpclient.is_loopback(url) is loopback
    with httpclient.client(url) as client:
        assert client.trust_env is (not loopback)

"""Tool-server fixtures: the server as a real process on a free loopback port.

User tools for the tests live in ``user_tools.py`` next to this file; a tools config points at
them through ``python_path``.  Every process started here is stopped (SIGTERM, then SIGKILL)
and reaped by the fixture that started it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
REPO = HERE.parents[1]


def tools_config(folder: Path) -> Path:
    """A YAML tools config for the test tools (hang, crash, …) in ``user_tools.py``."""
    config = folder / "tools.yaml"
    config.write_text(f"""
python_path: [{json.dumps(str(HERE))}]
tools:
  - function: user_tools:hang
    timeout: 0.5
    parameters: {{type: object, properties: {{seconds: {{type: number}}}}}}
  - function: user_tools:crash
    parameters: {{type: object, properties: {{}}, additionalProperties: false}}
  - function: user_tools:leave
    parameters: {{type: object, properties: {{}}}}
  - function: user_tools:not_json
    parameters: {{type: object}}
  - function: user_tools:refuse
    parameters: {{type: object}}
  - function: user_tools:add_tool
""", encoding="utf-8")
    return config


class ServerProcess:
    """A started ``python -m owllm.tools.server`` process."""

    def __init__(self, proc: subprocess.Popen[bytes], info: dict[str, Any], ready: Path,
                 log: Path) -> None:
        self.proc, self.info, self.ready_file, self.log = proc, info, ready, log
        self.url: str = info["url"]

    def stop(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


def start_server(folder: Path, *args: str, wait: bool = True) -> ServerProcess:
    folder.mkdir(parents=True, exist_ok=True)
    ready, log = folder / "ready.json", folder / "server.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get(
        "PYTHONPATH", "")]))
    with log.open("wb") as out:  # a file, not a pipe nobody reads, so the server never blocks
        proc = subprocess.Popen([sys.executable, "-m", "owllm.tools.server", "--host",
                                 "127.0.0.1", "--port", "0", "--ready-file", str(ready),
                                 "--no-entry-points", *args],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder)
    deadline = time.monotonic() + 20
    while wait and not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
            raise RuntimeError(f"tool server did not start:\n{log.read_text()}")
        time.sleep(0.02)
    info = json.loads(ready.read_text()) if wait else {"url": ""}
    return ServerProcess(proc, info, ready, log)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers in a test; all are stopped and reaped afterwards."""
    started: list[ServerProcess] = []

    def make(*args: str, wait: bool = True) -> ServerProcess:
        server = start_server(tmp_path / f"server{len(started)}", *args, wait=wait)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def tool_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server (built-ins + the test tools) shared by a module's tests."""
    folder = tmp_path_factory.mktemp("tool-server")
    server = start_server(folder, "--tools-config", str(tools_config(folder)), "--quiet")
    yield server
    assert server.stop() == 0

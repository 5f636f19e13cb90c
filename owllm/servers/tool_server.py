"""The tool server as a managed process: the supervisor's server of kind ``tools``.

Launched like a model's server (:mod:`owllm.servers.supervisor`): its own session, a token,
a log under ``<home>/.owllm/logs/tool-server.log``, recorded in the StateStore as the row
(``tools``, ``tool-server``) — a model called ``tool-server`` has its own row, (``model``,
``tool-server``) — and stopped by process group.  Ready once it has written its ready file
(it chose its port: ``--port 0``) and answers ``/health``.  One tool server per home.

It runs ``python -m owllm.tools.server``; nothing here imports :mod:`owllm.tools`, so the
tool package sits above the servers, not beside them.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

from owllm import httpclient
from owllm.config import Config
from owllm.paths import Home, make_private, private_dir
from owllm.servers.executor import Executor
from owllm.servers.process import probe_health
from owllm.servers.supervisor import Supervisor
from owllm.state_store import TOOLS_KIND, ServerStatus, now_iso

if TYPE_CHECKING:
    from owllm.servers.owners import Owner

KIND = TOOLS_KIND
NAME = "tool-server"
STARTUP_DEADLINE_S = 60.0
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8763


def tool_server_status(home: Home) -> dict[str, Any] | None:
    """The reconciled StateStore row of the home's tool server (None if never started)."""
    return Supervisor(home).reconcile(KIND, NAME)


def start_tool_server(home: Home, config: Config | None = None, host: str | None = None,
                      port: int | None = None, owner: Owner | None = None) -> dict[str, Any]:
    """Start the tool server (or return the running, healthy one: ``reused`` is then True).

    ``owner``: the run that owns it if it is launched now (servers/owners.py); a running
    one that is reused stays whoever's it was."""
    home.ensure()
    settings = config.tool_server if config is not None else None
    host = host or (settings.host if settings else DEFAULT_HOST)
    port = (settings.port if settings else DEFAULT_PORT) if port is None else port
    supervisor = Supervisor(home)

    def start() -> dict[str, Any]:
        supervisor.claim(KIND, NAME, owner.claim(home) if owner is not None else None)
        return _launch(supervisor, home, config, host, port)

    row, reused = supervisor.ensure(
        KIND, NAME, start, what="tool server",
        busy_hint="retry when it is less busy, or replace it: owllm tools stop, then serve")
    return row | {"healthy": True, "reused": reused}


def _launch(supervisor: Supervisor, home: Home, config: Config | None, host: str,
            port: int) -> dict[str, Any]:
    ready_file = home.state_dir / "run" / "tool-server.ready.json"
    private_dir(ready_file.parent)
    ready_file.unlink(missing_ok=True)
    log_path = home.logs_dir / "tool-server.log"
    argv = [sys.executable, "-m", "owllm.tools.server", "--host", host, "--port",
            str(port), "--ready-file", str(ready_file)]
    if config is not None:  # its tools: entries and tool_server.call_timeout_s
        argv += ["--config", str(config.path)]
    key_env = config.tool_server.api_key_env if config is not None else None
    env = {k: v for k, v in os.environ.items() if k != httpclient.SERVER_KEY_VAR}
    key = httpclient.api_key(key_env, what="the tool server")
    if key:  # in its environment, never on its command line
        env[httpclient.SERVER_KEY_VAR] = key
    info: dict[str, Any] = {}

    def ready() -> bool:
        if not info:
            try:
                info.update(json.loads(ready_file.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                return False
            make_private(ready_file)  # the server wrote it with the umask's mode
        return probe_health(info["url"])

    executor = Executor(argv, log_path, check=ready, env=env, deadline_s=STARTUP_DEADLINE_S,
                        what="tool server")
    record = {"status": ServerStatus.STARTING, "host": host, "port": None, "url": None,
              "log_path": str(log_path), "started_at": now_iso(), "stopped_at": None,
              "last_error": None}
    return supervisor.run(KIND, NAME, executor, record=record,
                          ready=lambda: {"port": info["port"], "url": info["url"],
                                         "extra": {"api_key_env": key_env}})


def stop_tool_server(home: Home) -> dict[str, Any] | None:
    """Stop the home's tool server (its whole process group); returns the final row."""
    return Supervisor(home).stop(KIND, NAME)

"""The tool server as a managed process, like the model servers: launched in its own process
group with a log under ``<home>/.owllm/logs/tool-server.log``, ready once it has written its
ready file and answers ``/health``, recorded in the StateStore (kind ``tools``), stopped by
process group.  Only one tool server per home."""

from __future__ import annotations

import json
import sys
from typing import Any

from filelock import FileLock

from owllm.config import Config
from owllm.paths import Home
from owllm.servers.process import (
    identity_from_row,
    identity_of,
    kill_group,
    launch,
    probe_health,
    wait_ready,
)
from owllm.state_store import (
    SERVER_CRASHED,
    SERVER_FAILED,
    SERVER_RUNNING,
    SERVER_STOPPED,
    StateStore,
    now_iso,
)

NAME = "tool-server"
STARTUP_DEADLINE_S = 60.0


def tool_server_status(home: Home) -> dict[str, Any] | None:
    """The reconciled StateStore row of the home's tool server (None if never started)."""
    store = StateStore(home.state_db)
    row = store.get_server(NAME)
    if row is None:
        return None
    ident = identity_from_row(row)
    alive = ident is not None and ident.alive()
    if row["status"] == SERVER_RUNNING and not alive:
        row = store.upsert_server(NAME, status=SERVER_CRASHED, stopped_at=now_iso(),
                                  last_error="tool server process is gone")
    row["healthy"] = alive and bool(row.get("url")) and probe_health(row["url"])
    return row


def start_tool_server(home: Home, config: Config | None = None, host: str | None = None,
                      port: int | None = None) -> dict[str, Any]:
    """Start the tool server (or return the running, healthy one: ``reused`` is then True)."""
    home.ensure()
    settings = config.tool_server if config is not None else None
    host = host or (settings.host if settings else "127.0.0.1")
    port = (settings.port if settings else 8763) if port is None else port
    store = StateStore(home.state_db)
    with FileLock(str(home.locks_dir / "tool-server.lock")):
        current = tool_server_status(home)
        if current and current["status"] == SERVER_RUNNING and current["healthy"]:
            return current | {"reused": True}
        if current and current["status"] == SERVER_RUNNING:
            stop_tool_server(home)
        ready_file = home.state_dir / "run" / "tool-server.ready.json"
        ready_file.parent.mkdir(parents=True, exist_ok=True)
        ready_file.unlink(missing_ok=True)
        log_path = home.logs_dir / "tool-server.log"
        argv = [sys.executable, "-m", "owllm.tools.server", "--host", host, "--port",
                str(port), "--ready-file", str(ready_file)]
        if config is not None:  # its tools: entries and tool_server.call_timeout_s
            argv += ["--config", str(config.path)]
        proc = launch(argv, log_path)
        ident = identity_of(proc.pid)
        store.upsert_server(NAME, kind="tools", status="STARTING", pid=ident.pid,
                            pgid=ident.pgid, pid_create_time=ident.create_time, host=host,
                            port=None, url=None, log_path=str(log_path),
                            started_at=now_iso(), stopped_at=None, last_error=None)
        info: dict[str, Any] = {}

        def ready() -> bool:
            if not info:
                try:
                    info.update(json.loads(ready_file.read_text(encoding="utf-8")))
                except (OSError, ValueError):
                    return False
            return probe_health(info["url"])

        try:
            wait_ready(proc, ready, log_path, deadline_s=STARTUP_DEADLINE_S,
                       stall_timeout_s=STARTUP_DEADLINE_S, what="tool server")
        except Exception as exc:
            kill_group(ident.pgid, ident.pid)
            proc.wait()
            store.upsert_server(NAME, status=SERVER_FAILED, last_error=str(exc)[:4000],
                                stopped_at=now_iso())
            raise
        row = store.upsert_server(NAME, status=SERVER_RUNNING, port=info["port"],
                                  url=info["url"])
        return row | {"healthy": True, "reused": False}


def stop_tool_server(home: Home) -> dict[str, Any] | None:
    """Stop the home's tool server (its whole process group); returns the final row."""
    store = StateStore(home.state_db)
    with FileLock(str(home.locks_dir / "tool-server-stop.lock")):
        row = store.get_server(NAME)
        if row is None:
            return None
        ident = identity_from_row(row)
        if ident is not None and ident.alive():
            kill_group(ident.pgid, ident.pid)
        return store.upsert_server(NAME, status=SERVER_STOPPED, stopped_at=now_iso())

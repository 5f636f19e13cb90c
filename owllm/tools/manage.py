"""The tool server as a managed process, like the model servers: launched in its own process
group with a log under ``<home>/.owllm/logs/tool-server.log``, ready once it has written its
ready file and answers ``/health``, recorded in the StateStore (kind ``tools``), stopped by
process group.  Only one tool server per home."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any

from owllm import httpclient
from owllm.config import Config
from owllm.errors import OwllmError, ServerError, StateStoreError
from owllm.paths import Home, make_private, private_dir
from owllm.servers.ports import LIVE_STATUSES
from owllm.servers.process import (
    BUSY,
    HEALTHY,
    identity_from_row,
    identity_of,
    kill_group,
    launch,
    probe_health,
    wait_answering,
    wait_ready,
)
from owllm.state_store import (
    SERVER_CRASHED,
    SERVER_FAILED,
    SERVER_RUNNING,
    SERVER_STARTING,
    SERVER_STOPPED,
    StateStore,
    now_iso,
)
from owllm.store_faults import home_lock

# The tool server's StateStore row key.  It shares the servers table with the model servers,
# so it is a name no model id can match (the ':'; paths.MODEL_ID_PATTERN): "tool-server" was
# a valid model id, and such a model's row and the tool server's overwrote each other
# (issue 13).  A StateStore migration renames the old row of an existing home.
NAME = "tools:tool-server"
STARTUP_DEADLINE_S = 60.0
# A live tool server whose /health was slow once is waited for, not replaced (as the model
# servers are, servers/manager.py): busy calls must not be cut.
BUSY_WAIT_S = 60.0
BUSY_PROBE_TIMEOUT_S = 10.0
SILENT_GRACE_S = 10.0


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
    with home_lock(home.locks_dir / "tool-server.lock"):
        current = tool_server_status(home)
        if current and current["status"] == SERVER_RUNNING and current["healthy"]:
            return current | {"reused": True}
        if current and current["status"] in LIVE_STATUSES:
            if _reusable(current):
                return current | {"healthy": True, "reused": True}
            stop_tool_server(home)  # dead, answering nothing, or a start abandoned midway
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
        proc = launch(argv, log_path, env=env)
        try:
            ident = identity_of(proc.pid)
            store.upsert_server(NAME, kind="tools", status=SERVER_STARTING,
                                **ident.row_fields(), host=host, port=None, url=None,
                                log_path=str(log_path), started_at=now_iso(),
                                stopped_at=None, last_error=None)
        except BaseException as exc:
            # Nothing records this server's pid, so nothing could ever stop it: stop it now.
            kill_group(proc.pid, proc.pid)  # its own session: the group id is its pid
            proc.wait()
            if isinstance(exc, OwllmError):
                exc.message = (f"the tool server (pid {proc.pid}) was stopped: it could not be "
                               f"recorded in the state store, and a server without a record "
                               f"could never be stopped.\n{exc.message}")
            raise
        info: dict[str, Any] = {}

        def ready() -> bool:
            if not info:
                try:
                    info.update(json.loads(ready_file.read_text(encoding="utf-8")))
                except (OSError, ValueError):
                    return False
                make_private(ready_file)  # the server wrote it with the umask's mode
            return probe_health(info["url"])

        try:
            wait_ready(proc, ready, log_path, deadline_s=STARTUP_DEADLINE_S,
                       stall_timeout_s=STARTUP_DEADLINE_S, what="tool server")
        except BaseException as exc:
            # Whatever ended the wait (a timeout, Ctrl-C, an error in the check), what was
            # launched is stopped: a start that gave up must not leave a server running.
            kill_group(ident.pgid, ident.pid)
            proc.wait()
            why = str(exc) if isinstance(exc, Exception) else (
                f"the start was interrupted ({type(exc).__name__}) before the tool server was "
                f"ready; it was stopped")
            with contextlib.suppress(StateStoreError):  # must not hide why the start failed
                store.upsert_server(NAME, status=SERVER_FAILED, last_error=why[:4000],
                                    stopped_at=now_iso())
            raise
        row = store.upsert_server(NAME, status=SERVER_RUNNING, port=info["port"],
                                  url=info["url"], extra={"api_key_env": key_env})
        return row | {"healthy": True, "reused": False}


def _reusable(row: dict[str, Any]) -> bool:
    """A live tool server that failed one health probe is reused once it answers; while it
    is busy (its port accepts connections) it is left running with a ServerError; False
    when it is to be replaced (see servers.process.wait_answering)."""
    ident = identity_from_row(row)
    if ident is None or not row.get("url"):
        return False  # a start abandoned before the server was ready: nobody uses it yet
    verdict = wait_answering(ident, row["url"], wait_s=BUSY_WAIT_S,
                             probe_timeout_s=BUSY_PROBE_TIMEOUT_S,
                             silent_grace_s=SILENT_GRACE_S)
    if verdict == BUSY:
        raise ServerError(
            f"the tool server (pid {ident.pid}) is alive and its port accepts connections, "
            f"but /health did not answer 200 within {BUSY_WAIT_S:.0f}s; it was left running "
            f"(it may be busy with calls, which a restart would cut)",
            hint="retry when it is less busy, or replace it: owllm tools stop, then serve")
    return verdict == HEALTHY


def stop_tool_server(home: Home) -> dict[str, Any] | None:
    """Stop the home's tool server (its whole process group); returns the final row."""
    store = StateStore(home.state_db)
    with home_lock(home.locks_dir / "tool-server-stop.lock"):
        row = store.get_server(NAME)
        if row is None:
            return None
        ident = identity_from_row(row)
        if ident is not None and ident.alive():
            kill_group(ident.pgid, ident.pid)
        return store.upsert_server(NAME, status=SERVER_STOPPED, stopped_at=now_iso())

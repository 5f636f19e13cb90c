"""Servers die with the run that started them: a watchdog process per run (issue 19).

This module is the watchdog (``python -m owllm.servers.reaper``); the owning side (the run's
:class:`~owllm.servers.owners.Owner`, its ledger, :func:`~owllm.servers.owners.owned_servers`,
the shared stop path) is :mod:`owllm.servers.owners`, re-exported here.

A *run* is whatever starts servers for a while and then should leave nothing behind: a pytest
session (with all its xdist workers), ``owllm model smoke`` / ``tools smoke``, or a block of
Python under :func:`owned_servers`.  Its :class:`Owner` is set on the manager
(``LLMServerManager.owner``); before every launch the manager records the owner in the
StateStore (``server_owners``), so a server is owned from its STARTING row on, never only
after it became ready.

The owning process starts one watchdog, ``python -m owllm.servers.reaper`` (testcontainers'
Ryuk, for processes): it runs in its own session, so a group kill of the run does not take it
first, and holds the read end of a pipe whose write end only the owning process has.  EOF on
that pipe (or the owning process gone: a forked child may still hold the write end) means the
run is over, however it ended: exit, exception, SIGKILL, OOM kill.  The watchdog then stops
exactly the live servers its run owns and did not hand over, through the manager's own stop
path (group kill, recorded descendants, the server's token: vLLM's engine processes included),
records an event naming itself, and exits.

What the run tells the watchdog is only *where* to look (the homes): one JSON line per home,
over the pipe, or, for processes without the pipe (xdist workers), appended to a ledger file
in the run's folder that the watchdog reads when the run ends.  Ownership itself lives in the
StateStore, written before the launch, so a server started just before the kill is not
missed, and one that another run (re)started since is not touched.

Not owned, so never stopped by a watchdog: servers that were already running when the run
wanted them (reused), and those started by ``owllm server start``.  Kept (handed over at the
start: ``--owllm-keep-servers``, ``--keep``): recorded with ``kept``, shown as such by
``owllm state``, never stopped.

While the run lives, the watchdog also notices an owned server whose main process died
(``kill -9`` of vLLM's API server) and reconciles it: the row says CRASHED and the processes
it left behind (EngineCore, workers) are reaped, instead of holding memory until someone runs
``owllm server status``.

No ``PR_SET_PDEATHSIG`` on the servers: a server's parent is whichever process launched it,
an xdist worker whose death alone must not take a server its siblings share, or
``owllm server start``, whose servers are meant to outlive it; and the signal follows the
*thread* that forked, so a server launched from a helper thread would die with that thread.
What the servers themselves spawn (vLLM's engine) is spawned by code in the model's env,
out of OWLLM's reach; the watchdog reaps it through the recorded descendants and the token.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from filelock import Timeout

from owllm.paths import Home
from owllm.servers.identity import identity_from_row
from owllm.servers.owners import (
    CLOSE_TIMEOUT_S,
    KINDS,
    LEDGER,
    LedgerEntry,
    Owner,
    Reaper,
    describe_owner,
    owned_rows,
    owned_servers,
    process_alive,
    read_ledger,
    release_run,
    start_owned_tool_server,
    stop_owned,
    whoami,
)
from owllm.servers.supervisor import Supervisor
from owllm.state_store import ServerStatus, server_subject

__all__ = ["CLOSE_TIMEOUT_S", "KINDS", "LEDGER", "LedgerEntry", "Owner", "Reaper",
           "describe_owner", "main", "owned_rows", "owned_servers", "process_alive", "read_ledger",
           "reconcile_crashed", "release_run", "start_owned_tool_server", "stop_owned",
           "watch", "whoami"]

POLL_S = 0.5  # how often the watchdog checks that its run is alive
SUPERVISE_S = 2.0  # how often it looks for owned servers whose main process died
# After its run is gone, how long the watchdog waits for the run's other processes that
# registered a home (xdist workers, which may be mid-start) before its last pass.
STRAGGLERS_S = 120.0


def reconcile_crashed(home: Path, run_id: str) -> list[str]:
    """Reconcile the RUNNING servers ``run_id`` owns whose main process died, so what they
    left behind (vLLM's EngineCore and workers) is reaped now.  A server whose start or stop
    holds its lock is left to that process."""
    if not Home(home).state_db.is_file():
        return []
    supervisor = Supervisor(Home(home))
    done: list[str] = []
    for _owner, row in owned_rows(supervisor, run_id):
        kind, name = row["kind"], row["model_id"]
        ident = identity_from_row(row)
        if row["status"] != ServerStatus.RUNNING or ident is None or ident.alive():
            continue
        # The supervisor's own lock, not waited for: a start or stop in progress decides.
        with contextlib.suppress(Timeout), supervisor.lock(kind, name, timeout=0):
            again = supervisor.store.get_server(name, kind=kind)
            if (again and again["status"] == ServerStatus.RUNNING
                    and again.get("pid") == row["pid"]):
                supervisor.reconcile(kind, name)
                done.append(server_subject(kind, name))
    return done


# -- the watchdog process -----------------------------------------------------------------

def _read_lifeline(fd: int, buffer: bytearray, homes: set[Path]) -> bool:
    """Read what the pipe holds; False at EOF (the run closed it or died)."""
    chunk = os.read(fd, 65536)
    if not chunk:
        return False
    buffer += chunk
    *lines, rest = buffer.split(b"\n")
    buffer[:] = rest
    for line in lines:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            homes.add(Path(json.loads(line)["home"]))
    return True


def watch(run_id: str, kind: str, owner: Mapping[str, Any], ledger: Path | None,
          fd: int = 0) -> int:
    """The watchdog's life: wait for the run to end, stop what it still owns, exit."""
    homes: set[Path] = set()
    buffer = bytearray()
    parent = os.getppid()
    last_check = time.monotonic()
    while True:
        readable, _, _ = select.select([fd], [], [], POLL_S)
        if readable and not _read_lifeline(fd, buffer, homes):
            break
        if os.getppid() != parent or not process_alive(owner):
            break  # a forked child of the run may hold the pipe open: the run is gone anyway
        if time.monotonic() - last_check >= SUPERVISE_S:
            last_check = time.monotonic()
            for home in homes | {e.home for e in read_ledger(ledger)}:
                with contextlib.suppress(Exception):  # best effort, every few seconds
                    reconcile_crashed(home, run_id)
    killed = not process_alive(owner)
    reason = (f"its owner, pid {owner['pid']}, is gone" if killed
              else "the run ended without stopping it")
    deadline = time.monotonic() + STRAGGLERS_S
    while True:
        entries = read_ledger(ledger)
        for home in sorted(homes | {e.home for e in entries}):
            try:
                for name in stop_owned(home, run_id, reason):
                    print(f"owllm reaper: stopped {name} in {home} ({kind} run {run_id}: "
                          f"{reason})", file=sys.stderr)
            except Exception as exc:  # a broken home must not spare the others
                print(f"owllm reaper: {home}: {exc!r}", file=sys.stderr)
        # Other processes of a killed run (xdist workers) may be mid-start: wait for them,
        # then one more pass catches what they launched.  A run that closed the lifeline
        # itself did so after its processes were done.
        stragglers = [e for e in entries if killed and e.process.get("pid") != owner["pid"]
                      and process_alive(e.process)]
        if not stragglers or time.monotonic() >= deadline:
            for home in homes | {e.home for e in entries}:
                with contextlib.suppress(Exception):
                    release_run(home, run_id)
            return 0
        time.sleep(POLL_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m owllm.servers.reaper",
                                     description="stop a run's servers when the run ends")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument("--owner", type=json.loads, required=True,
                        help="the owning process's identity (JSON, as whoami() gives it)")
    parser.add_argument("--ledger", type=Path, default=None)
    args = parser.parse_args(argv)
    return watch(args.run_id, args.kind, args.owner, args.ledger)


if __name__ == "__main__":
    sys.exit(main())

"""The supervisor: the one place where StateStore rows and processes meet.

Every managed server — a model's server (kind ``model``, named by the model id) or the tool
server (kind ``tools``) — has one row keyed by (kind, name), and goes through the same
algorithm, here and nowhere else:

    lock (kind, name) → reconcile the row with the process → reuse a healthy (or merely
    busy) live one → launch an :class:`~owllm.servers.executor.Executor` with a token →
    record its identity (stop it if that fails: nothing could stop it later) → wait until
    ready (stop it and record FAILED if that fails, Ctrl-C included) → RUNNING

and ``stop`` = group kill of the recorded identity + reap of the recorded descendants and
the token.  What differs between kinds (argv, readiness check, port choice, retries) is the
configuration's: :mod:`owllm.servers.manager` (models), :mod:`owllm.servers.tool_server`.

A process is ours while its recorded pid is alive *with* the recorded start time
(:class:`~owllm.servers.identity.Identity`): a pid reused by another program reads as gone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from owllm._store_faults import FULL, READ_ONLY, StateStoreFault, home_lock
from owllm.errors import OwllmError, ServerError, StateStoreError
from owllm.httpclient import endpoint_answers
from owllm.paths import Home
from owllm.servers.executor import Executor
from owllm.servers.identity import identity_from_row
from owllm.servers.process import (
    BUSY,
    HEALTHY,
    kill_group,
    probe_health,
    reap_leftovers,
    wait_answering,
)
from owllm.state_store import (
    LIVE_STATUSES,
    MODEL_KIND,
    ServerStatus,
    StateStore,
    now_iso,
)

# A live server of ours whose /health was too slow once is waited for, not replaced (under
# load one probe's 2 s is not enough): its /health is asked again, each time for up to
# BUSY_PROBE_TIMEOUT_S, for up to BUSY_WAIT_S; only one whose port refuses connections for
# SILENT_GRACE_S in a row (or that died) is replaced.  See process.wait_answering.
BUSY_WAIT_S = 60.0
BUSY_PROBE_TIMEOUT_S = 10.0
SILENT_GRACE_S = 10.0
ERROR_CHARS = 4000  # of last_error kept in a row


def lock_file(kind: str, name: str) -> str:
    """The lock file (under ``<home>/.owllm/locks``) of the server (kind, name)."""
    return f"server-{name}.lock" if kind == MODEL_KIND else f"server-{kind}-{name}.lock"


class Supervisor:
    """The managed servers of one home (see the module docstring)."""

    def __init__(self, home: Home, store: StateStore | None = None) -> None:
        self.home = home
        self.store = store or StateStore(home.state_db)
        # What this process launched, by (kind, name): stopped and reaped by this process.
        self.executors: dict[tuple[str, str], Executor] = {}

    @contextlib.contextmanager
    def lock(self, kind: str, name: str, timeout: float = -1) -> Iterator[None]:
        """One start or stop of (kind, name) at a time, across processes."""
        with home_lock(self.home.locks_dir / lock_file(kind, name), timeout=timeout):
            yield

    # -- rows ----------------------------------------------------------------------------

    def save(self, kind: str, name: str, **fields: Any) -> dict[str, Any]:
        """``upsert_server``; where the store takes no writes (a read-only home, a full
        disk) the row as it would be, marked ``unsaved``: status still tells the truth."""
        try:
            return self.store.upsert_server(name, kind=kind, **fields)
        except StateStoreFault as fault:
            if fault.reason not in (READ_ONLY, FULL):
                raise
            return {**(self.store.get_server(name, kind=kind)
                       or {"model_id": name, "kind": kind}), **fields,
                    "unsaved": fault.reason}

    def reconcile(self, kind: str, name: str) -> dict[str, Any] | None:
        """Bring the row of (kind, name) in line with reality; return it with ``healthy``."""
        row = self.store.get_server(name, kind=kind)
        if row is None:
            return None
        if is_attached_row(row):
            # An endpoint we attached to (backend: remote): no pid of ours to check; its
            # health is whether it answers.  It stays RUNNING while unhealthy (a flaky
            # network is not a crash); ensure() re-attaches, stop() detaches.
            healthy = row["status"] in LIVE_STATUSES and endpoint_answers(row)
            return row | {"healthy": healthy}
        url = row.get("url") or (f"http://{row['host']}:{row['port']}" if row.get("port") else "")
        ident = identity_from_row(row)
        alive = ident is not None and ident.alive()
        status = row["status"]
        healthy = bool(url) and alive and probe_health(url)
        if status in LIVE_STATUSES and not alive:
            if status == ServerStatus.RUNNING or row.get("pid"):
                new, why = ServerStatus.CRASHED, "server process is gone (or its pid was reused)"
            else:
                new, why = (ServerStatus.STOPPED,
                            "start was interrupted before the server launched")
            row = self.save(kind, name, status=new, last_error=why, stopped_at=now_iso())
            reaped = reap_row(row)  # e.g. vLLM's engine core and worker after a SIGKILL
            if reaped:
                row["reaped_pids"] = reaped
            if url and probe_health(url):
                row["port_conflict"] = f"{url} answers but not from our process"
        elif status == ServerStatus.STARTING and healthy:
            # Its starter died (or is about to record this itself): it serves, so it runs.
            row = self.save(kind, name, status=ServerStatus.RUNNING)
        row["healthy"] = healthy
        return row

    # -- start ---------------------------------------------------------------------------

    def ensure(self, kind: str, name: str, start: Callable[[], dict[str, Any]], *,
               what: str, busy_hint: str) -> tuple[dict[str, Any], bool]:
        """The running server (kind, name), started with ``start()`` unless a live one of
        ours is reused; returns ``(row, reused)``.  A live one that is busy is left running
        with a ServerError; one that is dead or silent is stopped and replaced."""
        with self.lock(kind, name):
            current = self.reconcile(kind, name)
            if current and current["status"] == ServerStatus.RUNNING and current["healthy"]:
                return current, True
            if current and current["status"] in LIVE_STATUSES:  # alive (reconciled)
                reused = self._reuse_live(current, what=what, busy_hint=busy_hint)
                if reused is not None:
                    return reused, True
                self.stop_row(current)  # alive but answering nothing: replace it
            return start(), False

    def _reuse_live(self, row: dict[str, Any], *, what: str,
                    busy_hint: str) -> dict[str, Any] | None:
        """A live server of ours that failed one health probe: its row (healthy) once it
        answers; a ServerError, leaving it running, while it is busy past BUSY_WAIT_S; None
        when it is to be replaced (it died, or its port refused connections throughout
        SILENT_GRACE_S, or it has no URL yet: a start abandoned before it was ready).
        "Unhealthy" alone never kills a server: that cut requests."""
        ident = identity_from_row(row)
        url = row.get("url") or ""
        if ident is None or not url:
            return None
        verdict = wait_answering(ident, url, wait_s=BUSY_WAIT_S,
                                 probe_timeout_s=BUSY_PROBE_TIMEOUT_S,
                                 silent_grace_s=SILENT_GRACE_S)
        if verdict == HEALTHY:
            if row["status"] != ServerStatus.RUNNING:  # its starter died; it serves now
                row = self.store.upsert_server(row["model_id"], kind=row["kind"],
                                               status=ServerStatus.RUNNING)
            return row | {"healthy": True}
        if verdict == BUSY:
            model_id = row["model_id"] if row["kind"] == MODEL_KIND else None
            raise ServerError(
                f"the {what} (pid {ident.pid}) is alive and its port accepts connections, "
                f"but /health did not answer 200 within {BUSY_WAIT_S:.0f}s; it was left "
                f"running (it may be busy serving requests, which a restart would cut)",
                hint=busy_hint, model_id=model_id, log_path=row.get("log_path"))
        return None

    def claim(self, kind: str, name: str, owner: dict[str, Any] | None) -> None:
        """Record the run that owns what is about to be launched (servers/owners.py); None:
        nobody's.  Before the launch, so a run killed mid-start still has it stopped."""
        self.store.set_server_owner(name, owner, kind=kind)

    def run(self, kind: str, name: str, executor: Executor, *,
            record: dict[str, Any] | None = None,
            ready: Callable[[], dict[str, Any]] | None = None,
            explain: Callable[[ServerError], None] | None = None) -> dict[str, Any]:
        """Launch ``executor`` as the server (kind, name) and wait until it is ready.

        ``record``: more fields for the row written with the launched identity (a start
        without a STARTING row yet writes its status here); ``ready()``: fields for the
        RUNNING row (its ``extra`` merged into the supervisor's: token, children,
        startup_s); ``explain(error)``: may add to the message of a failed wait."""
        executor.launch()
        key = (kind, name)
        self.executors[key] = executor
        ident = executor.identity
        assert ident is not None
        try:
            self.store.upsert_server(name, kind=kind, **ident.row_fields(),
                                     **(record or {}), extra={"token": executor.token})
        except BaseException as exc:
            # Nothing records this server's pid, so nothing could ever stop it: stop it now.
            executor.stop()
            self.executors.pop(key, None)
            if isinstance(exc, OwllmError):
                exc.message = (f"the {executor.what} (pid {ident.pid}) was stopped: it could "
                               f"not be recorded in the state store, and a server without a "
                               f"record could never be stopped.\n{exc.message}")
            with contextlib.suppress(StateStoreError):  # often fails the same way
                self.store.upsert_server(name, kind=kind, status=ServerStatus.FAILED,
                                         last_error=str(exc)[:ERROR_CHARS],
                                         stopped_at=now_iso())
            raise
        try:
            seconds = executor.wait()
            fields = ready() if ready is not None else {}
        except BaseException as exc:
            # Whatever ended the wait (a timeout, Ctrl-C, an error in a check), what was
            # launched is stopped: a start that gave up must not leave a server running.
            executor.stop()
            if isinstance(exc, ServerError):
                if explain is not None:
                    explain(exc)
                why = exc.message
            else:
                why = (f"the start was interrupted ({type(exc).__name__}: {exc}) before the "
                       f"{executor.what} was ready; it was stopped")
            # The store failing too must not hide why the start failed.
            with contextlib.suppress(StateStoreError):
                self.store.upsert_server(name, kind=kind, status=ServerStatus.FAILED,
                                         last_error=why[:ERROR_CHARS], stopped_at=now_iso())
            if isinstance(exc, ServerError):
                raise exc from None
            raise
        extra = {"startup_s": round(seconds, 3), "token": executor.token,
                 "children": executor.children, **fields.pop("extra", {})}
        return self.store.upsert_server(name, kind=kind, status=ServerStatus.RUNNING,
                                        extra=extra, **fields) | {"healthy": True}

    # -- stop ----------------------------------------------------------------------------

    def stop(self, kind: str, name: str) -> dict[str, Any] | None:
        """Stop the whole process tree of (kind, name); returns the final row."""
        with self.lock(kind, name):
            row = self.store.get_server(name, kind=kind)
            if row is None:
                return None
            return self.stop_row(row)

    def stop_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Stop the server a row records (its lock held by the caller)."""
        kind, name = row["kind"], row["model_id"]
        if is_attached_row(row):  # detach: the endpoint's processes are never ours
            return self.store.upsert_server(name, kind=kind, status=ServerStatus.STOPPED,
                                            stopped_at=now_iso())
        ident = identity_from_row(row)
        executor = self.executors.pop((kind, name), None)
        if ident is not None and ident.alive():
            kill_group(ident.pgid, ident.pid)
        if executor is not None and executor.proc is not None:
            executor.proc.wait()  # ours: reap it, no zombie left behind
        reap_row(row)
        return self.store.upsert_server(name, kind=kind, status=ServerStatus.STOPPED,
                                        stopped_at=now_iso())


def is_attached_row(row: dict[str, Any]) -> bool:
    """True for the row of an endpoint OWLLM attached to and does not manage
    (``extra.managed`` false: backend remote): nothing to kill, nothing to reap."""
    extra = row.get("extra")
    return isinstance(extra, dict) and extra.get("managed") is False


def reap_row(row: dict[str, Any]) -> list[int]:
    """Leftovers of a server whose own process is gone: its recorded descendants and what
    carries its token (see :func:`owllm.servers.process.reap_leftovers`)."""
    extra = row.get("extra")
    if not isinstance(extra, dict) or not (extra.get("token") or extra.get("children")):
        return []
    boot = row.get("boot_id")
    return reap_leftovers(str(extra.get("token") or ""), extra.get("children") or [],
                          recorded_boot=boot if isinstance(boot, str) else None)

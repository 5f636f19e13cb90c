"""What a run owns: its :class:`Owner`, the owner records, and stopping what it owned.

The design (a watchdog process per run, ownership recorded in the StateStore before each
launch, kept servers) is described in :mod:`owllm.servers.reaper`, the watchdog itself.  This
module is the owning side: the run's identity, its ledger of homes, the handle on its
watchdog (:class:`Reaper`), :func:`owned_servers` for runs in Python, and
:func:`stop_owned`, the one stop path both the run's normal end and its watchdog use.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from owllm.errors import ServerError
from owllm.paths import Home
from owllm.servers.identity import identity_from_row, identity_of
from owllm.servers.supervisor import Supervisor
from owllm.state_store import LIVE_STATUSES, StateStore, server_subject

if TYPE_CHECKING:
    from owllm.config import Config
    from owllm.servers.manager import LLMServerManager

KINDS = ("pytest", "smoke", "api")
LEDGER = "owllm-reaper.jsonl"  # a pytest run's ledger, in the run's shared temp folder
CLOSE_TIMEOUT_S = 120.0


def whoami() -> dict[str, Any]:
    """This process's identity as the StateStore records one (servers/identity.py
    ``Identity``: start ticks since boot where there is /proc, no wall-clock step moves
    them; an NTP step during a long run must not make its watchdog think the run died)."""
    fields = dict(identity_of(os.getpid()).row_fields())
    del fields["pgid"]  # an owner is one process, not a group
    return fields


def process_alive(fields: Mapping[str, Any]) -> bool:
    """Whether the process that :func:`whoami`-style ``fields`` name still runs (a zombie,
    or a pid reused by another program, does not)."""
    ident = identity_from_row(dict(fields))
    return ident is not None and ident.alive()


# -- the owning side ----------------------------------------------------------------------

@dataclass(eq=False)
class Owner:
    """The run that owns the servers a manager launches (``LLMServerManager.owner``).

    ``pid`` is the process whose end ends the run (the pytest controller); an xdist worker
    holds a copy made from :meth:`to_dict` and registers homes through ``ledger``.  ``keep``:
    the run hands its servers over from the start (they are recorded as kept and outlive it).
    """

    run_id: str
    kind: str
    pid: int
    pid_create_time: float | None = None
    pid_start_ticks: int | None = None
    boot_id: str | None = None
    keep: bool = False
    ledger: Path | None = None
    log: Path | None = None  # the watchdog's stderr (default: <home>/.owllm/logs/reaper.log)
    _reaper: Reaper | None = field(default=None, repr=False)
    _homes: set[Path] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def new(cls, kind: str, *, keep: bool = False, ledger: Path | None = None,
            log: Path | None = None) -> Owner:
        """The owner of a run that this process runs."""
        if kind not in KINDS:
            raise ValueError(f"owner kind {kind!r}: one of {', '.join(KINDS)}")
        return cls(run_id=uuid.uuid4().hex[:12], kind=kind, **whoami(), keep=keep,
                   ledger=ledger, log=log)

    @property
    def identity(self) -> dict[str, Any]:
        """The owning process, as :func:`whoami` says it."""
        return {"pid": self.pid, "pid_create_time": self.pid_create_time,
                "pid_start_ticks": self.pid_start_ticks, "boot_id": self.boot_id}

    def to_dict(self) -> dict[str, Any]:
        """What another process of the run (an xdist worker) needs: :meth:`from_dict`."""
        return {"run_id": self.run_id, "kind": self.kind, **self.identity, "keep": self.keep,
                "ledger": str(self.ledger) if self.ledger else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Owner:
        return cls(run_id=str(data["run_id"]), kind=str(data["kind"]), pid=int(data["pid"]),
                   pid_create_time=data.get("pid_create_time"),
                   pid_start_ticks=data.get("pid_start_ticks"), boot_id=data.get("boot_id"),
                   keep=bool(data.get("keep")),
                   ledger=Path(data["ledger"]) if data.get("ledger") else None)

    @property
    def in_owning_process(self) -> bool:
        return self.pid == os.getpid()

    def record(self) -> dict[str, Any]:
        """The StateStore's owner row for a server this run launches."""
        return {"run_id": self.run_id, "kind": self.kind, **self.identity, "kept": self.keep}

    def claim(self, home: Home | str | os.PathLike[str]) -> dict[str, Any]:
        """Called before a launch in ``home``: make sure the run's watchdog looks there, and
        return the owner record.  Raises when the run is already gone (an xdist worker
        outliving its killed controller): a server started now would be nobody's."""
        root = Path(os.fspath(home))
        with self._lock:
            if root not in self._homes:
                if not self.keep:  # kept servers are never stopped: no watchdog needed
                    self._register(root)
                self._homes.add(root)
        if not process_alive(self.identity):
            raise ServerError(
                f"the {self.kind} run {self.run_id} that would own this server has ended "
                f"(process {self.pid} is gone): not starting a server nobody would stop",
                hint="the run was killed; start it again")
        return self.record()

    def _register(self, root: Path) -> None:
        # The ledger line comes before the liveness check in claim(): a watchdog that reads
        # the ledger after its run died either sees this process (and waits for it) or this
        # process sees the run gone and launches nothing.
        if self.ledger is not None:
            line = json.dumps({"home": str(root), **whoami()})
            with open(self.ledger, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
        if self.in_owning_process:
            self.ensure_reaper(root).watch(root)

    def ensure_reaper(self, home: Path | None = None) -> Reaper:
        """This run's watchdog, started on first use (only by the owning process)."""
        if not self.in_owning_process:
            raise RuntimeError("only the run's own process starts its watchdog")
        if self._reaper is None:
            log = self.log or (Home(home).logs_dir / "reaper.log" if home else None)
            self._reaper = Reaper.start(self, log)
        return self._reaper

    def homes(self) -> list[Path]:
        """Every home a process of this run launched servers in."""
        found = set(self._homes)
        found.update(entry.home for entry in read_ledger(self.ledger))
        return sorted(found)

    def end(self) -> list[str]:
        """The run ends normally: stop what it still owns (kept servers stay), then let the
        watchdog go.  Returns the names of the servers stopped."""
        stopped: list[str] = []
        try:
            if not self.keep:
                for home in self.homes():
                    stopped += stop_owned(home, self.run_id)
                    release_run(home, self.run_id)
        finally:
            self.close()
        return stopped

    def close(self) -> None:
        """Let the watchdog go (it stops whatever is still owned, then exits)."""
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            reaper.close()


@dataclass
class LedgerEntry:
    """A home a process of the run registered, and that process (:func:`whoami`)."""

    home: Path
    process: dict[str, Any]


def read_ledger(path: Path | None) -> list[LedgerEntry]:
    """The homes (and the processes that registered them) of a run's ledger file."""
    if path is None:
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    entries = []
    for line in text.splitlines():
        try:
            data = json.loads(line)
            data["pid"] = int(data["pid"])
            entries.append(LedgerEntry(Path(data.pop("home")), data))
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill mid-write
    return entries


class Reaper:
    """The owning process's handle on its watchdog: the write end of the lifeline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self._watched: set[Path] = set()

    @classmethod
    def start(cls, owner: Owner, log: Path | None = None) -> Reaper:
        argv = [sys.executable, "-m", "owllm.servers.reaper", "--run-id", owner.run_id,
                "--kind", owner.kind, "--owner", json.dumps(owner.identity)]
        if owner.ledger is not None:
            argv += ["--ledger", str(owner.ledger)]
        stderr: IO[bytes] | int = subprocess.DEVNULL
        if log is not None:
            with contextlib.suppress(OSError):
                log.parent.mkdir(parents=True, exist_ok=True)
                stderr = open(log, "ab")  # noqa: SIM115  (the child keeps it; closed below)
        try:
            # Its own session: the terminal's Ctrl-C and a kill of the run's process group
            # reach the run, not its watchdog.  The pipe's write end is not inheritable, so
            # no server or worker started later holds the lifeline open.
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=stderr, start_new_session=True, close_fds=True)
        finally:
            if not isinstance(stderr, int):
                stderr.close()
        return cls(proc)

    def watch(self, home: Path) -> None:
        """Tell the watchdog to look at ``home`` when the run ends."""
        if home in self._watched or self.proc.stdin is None:
            return
        try:
            self.proc.stdin.write(json.dumps({"home": str(home)}).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            return  # the watchdog died: the servers outlive a kill, as before it existed
        self._watched.add(home)

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> int | None:
        """Close the lifeline and wait for the watchdog to finish its last pass."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None  # still stopping something: it exits by itself when done


def owned_rows(supervisor: Supervisor, run_id: str
               ) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """``(owner row, server row)`` of each server ``run_id`` owns and did not hand over
    (kept), whose row exists."""
    store = supervisor.store
    for owner in store.list_server_owners(run_id=run_id):
        row = store.get_server(owner["model_id"], kind=owner["server_kind"])
        if not owner["kept"] and row is not None:
            yield owner, row


def stop_owned(home: Path, run_id: str, reason: str | None = None) -> list[str]:
    """Stop the live servers in ``home`` that run ``run_id`` owns and did not hand over,
    through the supervisor's own stop path (no config needed: a broken one cannot stop the
    stop).  Returns their names (``kind:name`` for servers that are not a model's).

    ``reason`` (the watchdog's): also record an event saying who stopped it and why."""
    if not Home(home).state_db.is_file():
        return []
    supervisor = Supervisor(Home(home))
    store = supervisor.store
    stopped: list[str] = []
    for owner, row in owned_rows(supervisor, run_id):
        kind, name = row["kind"], row["model_id"]
        if row["status"] not in LIVE_STATUSES:
            continue
        # Re-read: another run may have restarted it (its own owner) since the list.
        current = store.get_server_owner(name, kind=kind)
        if current is None or current["run_id"] != run_id:
            continue
        subject = server_subject(kind, name)
        try:
            supervisor.stop(kind, name)
        except Exception as exc:  # one server that cannot be stopped must not spare the rest
            print(f"owllm reaper: stopping {subject} in {home} failed: {exc!r}",
                  file=sys.stderr)
            continue
        stopped.append(subject)
        if reason is not None:
            store.record_event("server", subject, "REAPED",
                               f"stopped by the owllm reaper (pid {os.getpid()}) of "
                               f"{owner['kind']} run {run_id}: {reason}",
                               {"reaper_pid": os.getpid(), "run_id": run_id,
                                "owner_kind": owner["kind"], "owner_pid": owner["pid"]})
    return stopped


def release_run(home: Path, run_id: str) -> None:
    """Forget what the ended run owned (kept servers stay kept): a server it stopped and
    someone restarts later (``owllm tools serve``) must not show it as its owner."""
    if Home(home).state_db.is_file():
        StateStore(Home(home).state_db).release_run(run_id)


# -- runs in Python -----------------------------------------------------------------------

@contextlib.contextmanager
def owned_servers(manager: LLMServerManager, kind: str = "api",
                  keep: bool = False) -> Iterator[Owner]:
    """Servers ``manager`` launches inside the block belong to it: stopped when the block
    ends, and by a watchdog if the process dies first (``keep``: handed over instead, they
    outlive the block).  Inside a run that already owns the manager (a pytest session), the
    block changes nothing: that run's owner stays in charge.

    ::

        with owned_servers(get_llm_server_manager()) as owner:
            row = manager.start_server("demo")
            ...
    """
    if manager.owner is not None:
        yield manager.owner
        return
    owner = Owner.new(kind, keep=keep)
    manager.owner = owner
    try:
        yield owner
    finally:
        manager.owner = None
        owner.end()


def start_owned_tool_server(owner: Owner | None, home: Home, config: Config | None = None,
                            port: int | None = None) -> dict[str, Any]:
    """``start_tool_server`` for a run: a tool server it launches is owned by it like a
    model server (recorded before the launch); a running one it reuses is not."""
    from owllm.servers.tool_server import start_tool_server

    return start_tool_server(home, config=config, port=port, owner=owner)


def describe_owner(owner: dict[str, Any] | None) -> dict[str, Any] | None:
    """An owner row as ``owllm state`` shows it, with whether the owning process lives."""
    if owner is None:
        return None
    return {"run_id": owner["run_id"], "kind": owner["kind"], "pid": owner["pid"],
            "kept": owner["kept"], "since": owner["since"],
            "alive": process_alive(owner)}

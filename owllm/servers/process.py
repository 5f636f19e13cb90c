"""Start a server in its own process group, wait until it is ready, stop the whole tree.

Readiness is a template (mirakuru's shape): start → poll ``check`` → if the process exits
first, raise at once with its exit code and the last log lines → if the log stops growing for
``stall_timeout`` seconds, or ``deadline`` passes, kill the group and raise a typed timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from owllm.errors import ServerDied, ServerStartTimeout
from owllm.servers.diagnose import TreeWatch, diagnose

LOG_TAIL_LINES = 30


@dataclass(frozen=True)
class Identity:
    """What identifies one process over time: pid reuse changes the create time."""

    pid: int
    pgid: int
    create_time: float

    def alive(self) -> bool:
        """True while this very process (not a pid reused by another program) runs."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.01:
                return False
            return proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


def identity_from_row(row: dict[str, object]) -> Identity | None:
    """The identity a StateStore server row recorded (None before the process started)."""
    pid, created = row.get("pid"), row.get("pid_create_time")
    if not isinstance(pid, int) or not isinstance(created, float):
        return None
    pgid = row.get("pgid")
    return Identity(pid=pid, pgid=pgid if isinstance(pgid, int) else pid, create_time=created)


def probe_health(url: str, path: str = "/health", timeout: float = 2.0) -> bool:
    """True when ``url + path`` answers 200."""
    import httpx

    try:
        return httpx.get(url + path, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def identity_of(pid: int) -> Identity:
    proc = psutil.Process(pid)
    return Identity(pid=pid, pgid=os.getpgid(pid), create_time=proc.create_time())


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def launch(argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
           cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session (its own process group), output appended to the log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: "
                  f"{' '.join(argv)}\n".encode())
        log.flush()
        # Python's fault handler in every Python process of the tree: a process that a
        # fatal signal kills (SIGILL, SIGSEGV) says so in the log, with its Python stack.
        child_env = {**(os.environ if env is None else env), "PYTHONFAULTHANDLER": "1"}
        return subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=cwd, env=child_env, start_new_session=True,
        )


def wait_ready(
    proc: subprocess.Popen[bytes] | Identity,
    check: Callable[[], bool],
    log_path: Path,
    *,
    deadline_s: float,
    stall_timeout_s: float,
    what: str,
    interval_s: float = 0.25,
    log_offset: int = 0,
) -> float:
    """Poll ``check`` until True; return the seconds it took.  See the module docstring.

    ``log_offset`` is where this start's output begins in the log: errors quote the first
    error after it (see :mod:`owllm.servers.diagnose`)."""
    start = time.monotonic()
    last_size, last_progress = -1, start
    watch = TreeWatch(proc.pid)
    while True:
        watch.poll()
        exit_code = _exit_code(proc)
        if exit_code is not None:
            raise died(what, exit_code, log_path, log_offset, watch)
        if check():
            return time.monotonic() - start
        if watch.vanished:
            found = diagnose(log_path, log_offset, None, watch)
            if found.signal:  # a child was killed: the server cannot become ready
                kill_group(_pgid(proc), proc.pid)
                raise died(what, _exit_code(proc), log_path, log_offset, watch)
        now = time.monotonic()
        try:
            size = log_path.stat().st_size
        except OSError:
            size = 0
        if size != last_size:  # output is progress: the stall timer starts over
            last_size, last_progress = size, now
        stalled = now - last_progress > stall_timeout_s
        if stalled or now - start > deadline_s:
            pid = proc.pid
            kill_group(_pgid(proc), pid)
            reason = (f"made no progress for {stall_timeout_s:.0f}s" if stalled
                      else f"was not ready after {deadline_s:.0f}s")
            raise ServerStartTimeout(
                f"{what} {reason}; its process group was killed. Last log lines "
                f"({log_path}):\n{tail(log_path)}",
                hint="raise startup_timeout_s / stall_timeout_s in the model's config if the "
                     "model is just slow to load",
            )
        time.sleep(interval_s)


def died(what: str, exit_code: int | None, log_path: Path, log_offset: int,
         watch: TreeWatch | None) -> ServerDied:
    """The typed error for a server that ended (or lost a child) before it was ready."""
    found = diagnose(log_path, log_offset, exit_code, watch)
    summary = found.summary(exit_code) or (
        f"it exited with code {exit_code}" if exit_code is not None else "it died")
    return ServerDied(
        f"{what} died before it was ready: {summary}.\nFirst error in the log "
        f"({log_path}):\n{found.excerpt}",
        hint=f"read the whole log: {log_path}", returncode=exit_code, signal=found.signal,
        process=found.process, log_path=str(log_path), excerpt=found.excerpt)


def _exit_code(proc: subprocess.Popen[bytes] | Identity) -> int | None:
    if isinstance(proc, subprocess.Popen):
        return proc.poll()
    return None if proc.alive() else -1


def _pgid(proc: subprocess.Popen[bytes] | Identity) -> int:
    if isinstance(proc, Identity):
        return proc.pgid
    try:
        return os.getpgid(proc.pid)
    except ProcessLookupError:
        return proc.pid  # started with start_new_session: the group id is the pid


def kill_group(pgid: int, pid: int | None = None, grace_s: float = 5.0) -> None:
    """SIGTERM the group (and descendants that left it), then SIGKILL what is left.

    Only our own processes are touched: the group we created, and the descendants of the
    pid we started (vLLM's engine processes may start their own groups).
    """
    members: list[psutil.Process] = []
    if pid is not None:
        try:
            root = psutil.Process(pid)
            members = [root, *root.children(recursive=True)]
        except psutil.Error:
            members = []
    _signal_group(pgid, signal.SIGTERM)
    for member in members:
        _signal(member, signal.SIGTERM)
    _gone, alive = _wait_gone(members, timeout=grace_s)
    if _group_alive(pgid) or alive:
        _signal_group(pgid, signal.SIGKILL)
        for member in alive:
            _signal(member, signal.SIGKILL)
        _wait_gone(alive, timeout=grace_s)
    deadline = time.monotonic() + grace_s
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


SERVER_TOKEN_VAR = "OWLLM_SERVER_TOKEN"


def descendants(pid: int) -> list[list[float]]:
    """``[pid, create_time]`` of every live descendant of ``pid`` (recorded at readiness)."""
    try:
        return [[child.pid, child.create_time()]
                for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def reap_leftovers(token: str = "", known: list[list[float]] | None = None,
                   grace_s: float = 5.0) -> list[int]:
    """Kill what a dead server left behind; returns the pids signalled.

    A server killed with SIGKILL (or crashed) can leave children behind, reparented to
    init: vLLM's engine core and worker.  Two ways find exactly its processes, never
    another program's, even after pid reuse:

    * ``known`` descendants recorded at readiness, each checked by its create time
      (vLLM's engine processes rename themselves, which hides their environment);
    * processes whose environment carries the server's ``OWLLM_SERVER_TOKEN``.

    The recorded process group is not used: once its leader is gone, a group with that id
    may be another program's.
    """
    found: dict[int, psutil.Process] = {}
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            if token and proc.environ().get(SERVER_TOKEN_VAR) == token:
                found[proc.pid] = proc
        except (psutil.Error, OSError):
            continue
    for pid, created in known or ():
        try:
            proc = psutil.Process(int(pid))
            if abs(proc.create_time() - created) < 0.01:
                found[proc.pid] = proc
        except psutil.Error:
            continue
    procs = list(found.values())
    for proc in procs:
        _signal(proc, signal.SIGTERM)
    _gone, alive = _wait_gone(procs, timeout=grace_s)
    for proc in alive:
        _signal(proc, signal.SIGKILL)
    _wait_gone(alive, timeout=grace_s)
    return sorted(found)


def _wait_gone(procs: list[psutil.Process], timeout: float
               ) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """``psutil.wait_procs`` that counts a zombie as gone: a process that is not our child
    stays a zombie until its parent (or init) reaps it, and some containers' pid 1 never
    does, so waiting for it to vanish would always wait out the grace period."""
    deadline = time.monotonic() + timeout
    alive = list(procs)
    while True:
        _gone, alive = psutil.wait_procs(alive, timeout=0)
        alive = [p for p in alive if not _is_zombie(p)]
        if not alive or time.monotonic() >= deadline:
            return [p for p in procs if p not in alive], alive
        time.sleep(0.05)


def _is_zombie(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _signal(proc: psutil.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(psutil.Error):
        proc.send_signal(sig)


def _group_alive(pgid: int) -> bool:
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error, PermissionError):
            continue
    return False

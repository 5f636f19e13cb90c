"""Start a server in its own process group, wait until it is ready, stop the whole tree.

Readiness is a template (mirakuru's shape): start → poll ``check`` → if the process exits
first, raise at once with its exit code and the last log lines → if the log stops growing for
``stall_timeout`` seconds, or ``deadline`` passes, kill the group and raise a typed timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from owllm.errors import ServerDied, ServerStartTimeout
from owllm.paths import PRIVATE_FILE_MODE, make_private, private_dir
from owllm.servers.diagnose import TreeWatch, diagnose
from owllm.servers.identity import (
    SERVER_TOKEN_VAR,
    Identity,
    _same_process,
    boot_id,
)

LOG_TAIL_LINES = 30


def probe_health(url: str, path: str = "/health", timeout: float = 2.0) -> bool:
    """True when ``url + path`` answers 200 (never through a proxy for loopback)."""
    import httpx

    from owllm import httpclient

    try:
        return httpclient.get(url + path, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


# What a live server that failed one health probe turned out to be (wait_answering).
HEALTHY, BUSY, SILENT, DEAD = "healthy", "busy", "silent", "dead"


def port_accepts(url: str, timeout: float = 2.0) -> bool:
    """True when the host and port of ``url`` accept a TCP connection."""
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        return False
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_answering(ident: Identity, url: str, path: str = "/health", *, wait_s: float,
                   probe_timeout_s: float, silent_grace_s: float,
                   interval_s: float = 0.25) -> str:
    """Wait on a live server of ours whose health probe just failed; say what it is.

    One slow ``/health`` is what a busy server looks like (a long generation, a full
    queue), and killing it then cuts the requests it is serving.  So: while its port
    accepts connections, ``path`` is asked again with the longer ``probe_timeout_s`` for
    up to ``wait_s`` seconds.  Returns :data:`HEALTHY` (it answered 200), :data:`BUSY` (its
    port accepts connections but no 200 came in ``wait_s``), :data:`SILENT` (its port has
    refused connections for ``silent_grace_s`` seconds in a row) or :data:`DEAD` (the
    process ended).  Only DEAD and SILENT servers are for replacing.
    """
    start = time.monotonic()
    silent_since: float | None = None
    while True:
        if not ident.alive():
            return DEAD
        now = time.monotonic()
        if port_accepts(url):
            silent_since = None
            if probe_health(url, path, timeout=probe_timeout_s):
                return HEALTHY
            if time.monotonic() - start >= wait_s:
                return BUSY
        else:
            silent_since = now if silent_since is None else silent_since
            if now - silent_since >= silent_grace_s:
                return SILENT
        time.sleep(interval_s)


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
    """Start ``argv`` in a new session (its own process group), output appended to the log.

    The log is private (0600, its folder 0700 when made here): servers log prompts and
    errors."""
    if not log_path.parent.is_dir():
        private_dir(log_path.parent)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE_MODE)
    with open(fd, "ab") as log:
        make_private(log_path)  # a log an older OWLLM made with the umask's 0644
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
    model_id: str | None = None,
) -> float:
    """Poll ``check`` until True; return the seconds it took.  See the module docstring.

    ``log_offset`` is where this start's output begins in the log: errors quote the first
    error after it (see :mod:`owllm.servers.diagnose`).  ``model_id`` goes into the errors'
    field of that name (None: not a model's server)."""
    start = time.monotonic()
    last_size, last_progress = -1, start
    watch = TreeWatch(proc.pid)
    while True:
        watch.poll()
        exit_code = _exit_code(proc)
        if exit_code is not None:
            raise died(what, exit_code, log_path, log_offset, watch, model_id)
        if check():
            return time.monotonic() - start
        if watch.vanished:
            found = diagnose(log_path, log_offset, None, watch)
            if found.signal:  # a child was killed: the server cannot become ready
                kill_group(_pgid(proc), proc.pid)
                raise died(what, _exit_code(proc), log_path, log_offset, watch, model_id)
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
                log_path=str(log_path), waited_s=round(now - start, 3), stalled=stalled,
                model_id=model_id,
            )
        time.sleep(interval_s)


def died(what: str, exit_code: int | None, log_path: Path, log_offset: int,
         watch: TreeWatch | None, model_id: str | None = None) -> ServerDied:
    """The typed error for a server that ended (or lost a child) before it was ready."""
    found = diagnose(log_path, log_offset, exit_code, watch)
    summary = found.summary(exit_code) or (
        f"it exited with code {exit_code}" if exit_code is not None else "it died")
    return ServerDied(
        f"{what} died before it was ready: {summary}.\nFirst error in the log "
        f"({log_path}):\n{found.excerpt}",
        hint=f"read the whole log: {log_path}", returncode=exit_code, signal=found.signal,
        process=found.process, log_path=str(log_path), excerpt=found.excerpt,
        model_id=model_id)


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


def reap_leftovers(token: str = "", known: Sequence[Sequence[float | None]] | None = None,
                   grace_s: float = 5.0, recorded_boot: str | None = None) -> list[int]:
    """Kill what a dead server left behind; returns the pids signalled.

    A server killed with SIGKILL (or crashed) can leave children behind, reparented to
    init: vLLM's engine core and worker.  Two ways find exactly its processes, never
    another program's, even after pid reuse:

    * ``known`` descendants recorded at readiness, each checked by its start time (in clock
      ticks, which no clock step moves; vLLM's engine processes rename themselves, which
      hides their environment) — none when ``recorded_boot`` is not this boot;
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
    same_boot = not recorded_boot or boot_id() in (None, recorded_boot)
    for entry in (known or ()) if same_boot else ():
        pid, created = entry[0], entry[1]
        ticks = entry[2] if len(entry) > 2 else None  # rows recorded before ticks: none
        if pid is None or created is None:
            continue
        try:
            proc = psutil.Process(int(pid))
            if _same_process(proc, float(created), ticks):
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

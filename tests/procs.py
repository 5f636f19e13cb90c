"""Process checks shared by the tests."""

from __future__ import annotations

import ctypes
import signal

import psutil

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for a server a test fixture starts by itself (not through the manager,
    so no run watchdog knows it): the kernel kills it when the test process that started it
    dies, so a killed pytest run (CI's timeout, ``kill -9`` of a worker) leaves no server
    behind.  Teardown still stops it the normal way; this only covers teardown not running."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def gone(pid: int, create_time: float | None = None) -> bool:
    """True when the process ended.  A zombie (ended, not yet reaped: its parent exited and
    init has not collected it yet) counts as ended, and so does a pid reused since
    ``create_time``."""
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 0.01:
            return True
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True

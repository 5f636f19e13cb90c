"""Process checks shared by the tests."""

from __future__ import annotations

import psutil


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

"""Which process a StateStore row means: identity that survives pid reuse and clock steps.

A server row records its process's pid, group, start time in clock ticks since boot (Linux)
and the boot's id (:meth:`Identity.row_fields`); :func:`identity_from_row` reads it back.  The
supervisor (:mod:`owllm.servers.supervisor`) is the only writer of these fields, and the
reaper's owners use the same identity for the owning process.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import psutil

# The variable every managed process (and what it spawns) carries, with a token unique to
# that start: how leftovers of a dead server are found even after they renamed themselves.
SERVER_TOKEN_VAR = "OWLLM_SERVER_TOKEN"


def descendants(pid: int) -> list[list[float | None]]:
    """``[pid, create_time, start_ticks]`` of every live descendant of ``pid`` (recorded at
    readiness; ``start_ticks`` is None where there is no /proc, see :class:`Identity`)."""
    try:
        return [[child.pid, child.create_time(), _start_ticks(child.pid)]
                for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _same_process(proc: psutil.Process, created: float, ticks: float | None) -> bool:
    """``proc`` is the process recorded with ``created`` / ``ticks`` (see Identity)."""
    if ticks is not None and _HAS_PROC_STAT:
        return _start_ticks(proc.pid) == int(ticks)
    return abs(proc.create_time() - created) < 0.01


# Linux: a process's start in clock ticks since boot, from /proc (see Identity).
_PROC = Path("/proc")
_HAS_PROC_STAT = (_PROC / "self" / "stat").is_file()


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state, start ticks since boot)`` of ``pid`` from ``/proc/<pid>/stat`` (fields 3
    and 22); None when there is no such process."""
    try:
        data = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # Field 2, the command name, is in parentheses and may itself hold spaces and ')'.
    fields = data[data.rfind(b")") + 2:].split()
    try:
        return fields[0].decode(), int(fields[19])
    except (IndexError, ValueError):
        return None


@functools.lru_cache(maxsize=1)
def boot_id() -> str | None:
    """This boot's id (Linux): start ticks count from the boot, so they compare only
    within one."""
    try:
        return (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip() or None
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    stat = _proc_stat(pid) if _HAS_PROC_STAT else None
    return stat[1] if stat else None


@dataclass(frozen=True)
class Identity:
    """What identifies one process over time: pid reuse changes its start time.

    On Linux the start time is the one in clock ticks since boot (``/proc/<pid>/stat``
    field 22), with the boot's id: no wall-clock step (NTP, ``date -s``, a VM resume)
    changes them.  ``create_time`` (psutil's: the boot time plus those ticks, where the boot
    time is derived from the wall clock) moves with every step, and comparing it to 0.01 s
    made live servers read as dead, then never killed.  It is kept for display, for other
    systems, and for rows recorded before the ticks were.
    """

    pid: int
    pgid: int
    create_time: float
    start_ticks: int | None = None
    boot_id: str | None = None

    def alive(self) -> bool:
        """True while this very process (not a pid reused by another program) runs."""
        if self.start_ticks is not None and _HAS_PROC_STAT:
            if self.boot_id and boot_id() not in (None, self.boot_id):
                return False  # recorded in an earlier boot: that process is gone
            stat = _proc_stat(self.pid)
            return stat is not None and stat[1] == self.start_ticks and stat[0] not in "ZX"
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.01:
                return False
            return proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def row_fields(self) -> dict[str, object]:
        """The StateStore server-row fields that record this identity."""
        return {"pid": self.pid, "pgid": self.pgid, "pid_create_time": self.create_time,
                "pid_start_ticks": self.start_ticks, "boot_id": self.boot_id}


def identity_from_row(row: dict[str, object]) -> Identity | None:
    """The identity a StateStore server row recorded (None before the process started)."""
    pid, created = row.get("pid"), row.get("pid_create_time")
    if not isinstance(pid, int) or not isinstance(created, float):
        return None
    pgid, ticks, boot = row.get("pgid"), row.get("pid_start_ticks"), row.get("boot_id")
    return Identity(pid=pid, pgid=pgid if isinstance(pgid, int) else pid, create_time=created,
                    start_ticks=ticks if isinstance(ticks, int) else None,
                    boot_id=boot if isinstance(boot, str) else None)


def identity_of(pid: int) -> Identity:
    """The identity of the running process ``pid`` (see :class:`Identity`)."""
    proc = psutil.Process(pid)
    ticks = _start_ticks(pid)
    return Identity(pid=pid, pgid=os.getpgid(pid), create_time=proc.create_time(),
                    start_ticks=ticks, boot_id=boot_id() if ticks is not None else None)

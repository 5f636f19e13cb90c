"""Why the StateStore (or a lock file of the home) cannot be used, in words that lead to
the fix.

SQLite and the file system report a full disk, a read-only folder and a damaged file in
ways that look alike (``disk I/O error`` when the ``-shm`` file cannot grow on a full disk,
``unable to open database file`` in a read-only folder).  :func:`store_fault` maps each to
a :class:`StateStoreFault` with its ``reason`` — using SQLite's result code, the ``errno``,
and, where those say little, what the folder's file system shows (``statvfs``) — so a full
disk is never called a damaged database, and a read-only home says which commands still
work.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from owllm.errors import StateStoreError
from owllm.paths import PRIVATE_FILE_MODE, READ_ONLY_ERRNOS, make_private

# Why a store (or a lock file of the home) cannot be used: StateStoreFault.reason.
FULL, READ_ONLY, BUSY, CORRUPT, IO = "full", "read-only", "busy", "corrupt", "io"
# Free space under which a failed write is put down to a full disk.
LOW_SPACE_BYTES = 1 << 20
# SQLite's primary result codes, and the messages that stand for them where Python (< 3.11)
# does not give the code.
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = (
    10, 11, 13, 14, 26)
_SQLITE_MESSAGES = (("database or disk is full", _SQLITE_FULL),
                    ("readonly database", _SQLITE_READONLY),
                    ("file is not a database", _SQLITE_NOTADB),
                    ("malformed", _SQLITE_CORRUPT), ("locked", _SQLITE_BUSY),
                    ("unable to open database file", _SQLITE_CANTOPEN),
                    ("disk I/O error", _SQLITE_IOERR))
_REASON_OF_CODE = {_SQLITE_BUSY: BUSY, _SQLITE_LOCKED: BUSY, _SQLITE_CORRUPT: CORRUPT,
                   _SQLITE_NOTADB: CORRUPT, _SQLITE_FULL: FULL, _SQLITE_READONLY: READ_ONLY,
                   _SQLITE_PERM: READ_ONLY}
_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


class StateStoreFault(StateStoreError):
    """The store (or a lock file beside it) cannot be used now, and why.

    ``reason``: ``full`` (the disk), ``read-only`` (the folder, its file system or the file
    takes no writes), ``busy`` (another process held the write lock past the timeout),
    ``corrupt`` (the file is damaged or not a database), ``io`` (anything else the file
    system said).  Only ``corrupt`` is about the file itself; ``path`` is the file."""

    def __init__(self, message: str, *, hint: str, reason: str, path: str) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason
        self.path = path


def _sqlite_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF  # extended codes (SQLITE_IOERR_SHMSIZE) carry the primary low
    text = str(exc)
    return next((code for needle, code in _SQLITE_MESSAGES if needle in text), None)


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _statvfs(folder: Path) -> os.statvfs_result | None:
    statvfs = getattr(os, "statvfs", None)  # not on Windows
    try:
        return statvfs(folder) if statvfs is not None else None
    except OSError:
        return None


def _read_only_reason(path: Path) -> str | None:
    """What keeps ``path`` or its folder from taking writes, in words (None: nothing seen).
    Asked only after a write failed."""
    folder = _existing(path.parent)
    vfs = _statvfs(folder)
    if vfs is not None and vfs.f_flag & getattr(os, "ST_RDONLY", 0):
        return f"{folder} is on a read-only file system"
    if not os.access(folder, os.W_OK):
        return f"{folder} is not writable by this user"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{path.name} is read-only"
    return None


def _disk_full(path: Path) -> bool:
    """True when the disk holding ``path`` has (next to) no space or no inodes left."""
    vfs = _statvfs(_existing(path.parent))
    return vfs is not None and (vfs.f_bavail * vfs.f_frsize < LOW_SPACE_BYTES
                                or bool(vfs.f_files and not vfs.f_favail))


def store_fault(path: Path, exc: BaseException, what: str = "state store",
                busy_timeout_s: float | None = None) -> StateStoreFault:
    """The typed error for ``exc`` (a ``sqlite3.Error`` or an ``OSError``) met while using
    ``path``: the store, or a lock file of the home (``what`` names it).
    ``busy_timeout_s`` is how long a busy store was waited for (said in its message)."""
    path = Path(path)
    folder = path.parent
    if isinstance(exc, OSError):
        errno_ = exc.errno
        reason = (FULL if errno_ in _FULL_ERRNOS else
                  READ_ONLY if errno_ in READ_ONLY_ERRNOS else "")
    else:
        reason = _REASON_OF_CODE.get(_sqlite_code(exc) or -1, "")
    why = _read_only_reason(path) if reason in ("", READ_ONLY) else None
    if not reason:
        # CANTOPEN, IOERR ("disk I/O error" when the -shm cannot grow on a full disk): what
        # the file system shows decides.  Read-only first: a read-only image reports no
        # free space too.
        reason = READ_ONLY if why else FULL if _disk_full(path) else IO
    if reason == FULL:
        intact = "; the database itself is intact" if what == "state store" else ""
        return StateStoreFault(
            f"{what} {path}: the disk that holds {folder} is full ({exc}){intact}",
            reason=FULL, path=str(path),
            hint=f"free some space on that disk (df -h {folder}), then retry; nothing was "
                 "changed")
    if reason == READ_ONLY:
        return StateStoreFault(
            f"{what} {path} cannot be written: {why or 'it is read-only'} ({exc})",
            reason=READ_ONLY, path=str(path),
            hint="commands that only read (owllm state, server status, env list) still work; "
                 "to change anything, make it writable for this user or point --home / "
                 "OWLLM_HOME at a writable folder")
    if reason == BUSY:
        return StateStoreFault(
            f"{what} {path} is busy: {exc} (another process held its write lock "
            + (f"for over {busy_timeout_s:g} s)" if busy_timeout_s is not None
               else "past the wait)"), reason=BUSY, path=str(path),
            hint="retry; if it persists, look for a stuck owllm process using this home")
    if reason == CORRUPT:
        return StateStoreFault(
            f"{what} {path} cannot be read: {exc}", reason=CORRUPT, path=str(path),
            hint="the file is left untouched; move it aside to start with a fresh state "
                 "(envs and servers are re-detected), or restore a state.db.bak-v* copy")
    return StateStoreFault(
        f"{what} {path}: {exc}", reason=IO, path=str(path),
        hint=f"the file is left untouched; check the file system that holds {folder} "
             "(space, permissions, errors in the kernel log)")


@contextmanager
def home_lock(path: Path, timeout: float = -1) -> Iterator[None]:
    """A ``FileLock`` on ``path`` (under ``<home>/.owllm/``) that is private (0600) and
    that, when the lock file cannot be opened (read-only home, full disk), raises a
    :class:`StateStoreFault` saying so instead of a raw ``OSError``."""
    lock = FileLock(str(path), timeout=timeout, mode=PRIVATE_FILE_MODE)
    try:
        lock.acquire()
    except Timeout:
        raise
    except OSError as exc:
        raise store_fault(Path(path), exc, what="lock file") from exc
    try:
        make_private(Path(path))  # made by an older OWLLM, with the umask's mode
        yield
    finally:
        lock.release()

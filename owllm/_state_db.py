"""The StateStore's SQLite file: connections, reads that survive a read-only home or a full
disk, writes in ``BEGIN IMMEDIATE``, private file modes, migrations with a backup first.

:class:`SQLiteFile` is the plumbing :class:`owllm.state_store.StateStore` builds its queries
on (see that module's docstring for the design); it knows the schema only through
:data:`owllm._state_schema.MIGRATIONS`.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path

from filelock import Timeout

from owllm._state_schema import MIGRATIONS, SCHEMA_VERSION
from owllm._store_faults import FULL, IO, READ_ONLY, StateStoreFault, home_lock, store_fault
from owllm.errors import StateStoreError
from owllm.paths import PRIVATE_FILE_MODE, make_private, private_dir

BUSY_TIMEOUT_MS = 60_000
# Why a write failed, for which a read may still be served from the file as it is
# (see SQLiteFile._snapshot): not when it is busy or damaged.
_READABLE_WHEN = frozenset({FULL, READ_ONLY, IO})


def now_iso() -> str:
    """Now, in UTC, as the rows record times."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class SQLiteFile:
    """One SQLite database file, opened (created, migrated) once; see the module docstring."""

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self.db_path = Path(db_path)
        # False when the store was opened where it cannot be written (a read-only home, a
        # full disk): reads work, each write raises the StateStoreFault that says why.
        self.writable = True
        try:
            self._open()
        except StateStoreFault as fault:
            if fault.reason not in _READABLE_WHEN:
                raise
            self._check_readable(fault)
            self.writable = False

    def _open(self) -> None:
        try:
            if not self.db_path.parent.is_dir():
                private_dir(self.db_path.parent)
            self._create_private()
        except OSError as exc:
            raise self._fault(exc) from exc
        # Creating the file, switching it to WAL and migrating need SQLite's exclusive lock,
        # which its busy timeout does not cover: two processes opening a new store at once
        # got "database is locked".  One opener at a time does this (the fast path, an
        # up-to-date file, only reads).
        lock_path = self.db_path.with_name(self.db_path.name + ".init.lock")
        try:
            with home_lock(lock_path, timeout=BUSY_TIMEOUT_MS / 1000):
                self._migrate()
        except Timeout:
            raise StateStoreError(
                f"state store {self.db_path}: another process has been opening it for over "
                f"{BUSY_TIMEOUT_MS // 1000} s", hint="look for a stuck owllm process using "
                "this home") from None

    def _create_private(self) -> None:
        """Create the database file 0600 before SQLite does (SQLite would use the umask's
        0644, and gives its -wal/-shm files the database's mode); tighten an older one."""
        try:
            os.close(os.open(self.db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                             PRIVATE_FILE_MODE))  # an empty file is an empty database
        except FileExistsError:
            for suffix in ("", "-wal", "-shm"):
                make_private(self.db_path.with_name(self.db_path.name + suffix))

    def _check_readable(self, fault: StateStoreFault) -> None:
        """Open a store that cannot be written for reads, or raise ``fault``."""
        if not self.db_path.is_file():
            raise fault
        try:
            version = self.schema_version
        except StateStoreError:
            raise fault from None
        if version > SCHEMA_VERSION:
            raise StateStoreError(
                f"state store {self.db_path} has schema version {version}, newer than this "
                f"OWLLM understands ({SCHEMA_VERSION})",
                hint="upgrade owllm, or point --home/OWLLM_HOME at another folder")
        if version < SCHEMA_VERSION:
            raise StateStoreFault(
                f"{fault.message}\nthe store needs an upgrade (schema {version} to "
                f"{SCHEMA_VERSION}) before this OWLLM can read it, and that needs a write",
                hint=fault.hint or "", reason=fault.reason, path=fault.path)

    # -- plumbing -------------------------------------------------------------------------

    def _connect(self, uri: str | None = None) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(uri or self.db_path, timeout=BUSY_TIMEOUT_MS / 1000,
                                   isolation_level=None, uri=uri is not None)
        except sqlite3.DatabaseError as exc:
            raise self._fault(exc) from exc
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            # In WAL mode NORMAL loses nothing when a process is killed (-9 included); only an
            # OS crash or power loss can drop the last transactions.  FULL halves write speed.
            conn.execute("PRAGMA synchronous = NORMAL")
            return conn
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise self._fault(exc) from exc

    def _fault(self, exc: BaseException) -> StateStoreFault:
        return store_fault(self.db_path, exc, busy_timeout_s=BUSY_TIMEOUT_MS / 1000)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        conn = self._read_connection()
        try:
            yield conn
        except sqlite3.DatabaseError as exc:
            raise self._fault(exc) from exc
        finally:
            conn.close()

    def _read_connection(self) -> sqlite3.Connection:
        try:
            conn = self._connect()
        except StateStoreFault as fault:
            return self._snapshot(fault)
        try:
            conn.execute("PRAGMA schema_version")  # a read: it needs the WAL index (-shm)
            return conn
        except sqlite3.DatabaseError as exc:
            conn.close()
            return self._snapshot(self._fault(exc))

    def _snapshot(self, fault: StateStoreFault) -> sqlite3.Connection:
        """A read-only connection where the normal one failed because SQLite could not
        create or grow its ``-shm`` file (read-only home, full disk), else raise ``fault``.

        ``mode=ro`` reads the database with its ``-wal`` through an existing ``-shm``;
        ``immutable=1`` reads the main file alone, right only while no ``-wal`` holds
        commits (after the last connection closed cleanly, it holds none)."""
        if fault.reason not in _READABLE_WHEN or not self.db_path.is_file():
            raise fault
        wal = self.db_path.with_name(self.db_path.name + "-wal")
        uri = self.db_path.resolve().as_uri()
        options = ["mode=ro"]
        if not (wal.exists() and wal.stat().st_size > 0):
            options.append("immutable=1")
        for option in options:
            try:
                conn = self._connect(f"{uri}?{option}")
            except StateStoreError:
                continue
            try:
                conn.execute("PRAGMA schema_version")
                return conn
            except sqlite3.DatabaseError:
                conn.close()
        raise fault

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                with suppress(sqlite3.Error):  # a full disk can fail the rollback too
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise self._fault(exc) from exc
        finally:
            conn.close()

    def _migrate(self) -> None:
        conn = self._connect()
        try:
            # WAL is persistent once set; setting it needs no write lock on an up-to-date file.
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":  # e.g. a network file system
                conn.execute("PRAGMA journal_mode = DELETE")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == SCHEMA_VERSION:
                return
            if version > SCHEMA_VERSION:
                raise StateStoreError(
                    f"state store {self.db_path} has schema version {version}, newer than this "
                    f"OWLLM understands ({SCHEMA_VERSION})",
                    hint="upgrade owllm, or point --home/OWLLM_HOME at another folder",
                )
            if version > 0:
                # Copy first, outside the write transaction (a backup needs to read the file).
                self._backup(conn, version)
            conn.execute("BEGIN EXCLUSIVE")
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # re-read under lock
            if version < SCHEMA_VERSION:
                for index in range(version, SCHEMA_VERSION):
                    for statement in filter(str.strip, MIGRATIONS[index].split(";")):
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise self._fault(exc) from exc
        finally:
            conn.close()

    def _backup(self, conn: sqlite3.Connection, version: int) -> None:
        target = self.db_path.with_name(f"{self.db_path.name}.bak-v{version}")
        if target.exists():
            return
        tmp = target.with_name(target.name + ".tmp")
        # A copy of the store is as private as the store (sqlite3 would use the umask).
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE))
        make_private(tmp)
        dest = sqlite3.connect(tmp)
        try:
            conn.backup(dest)
        finally:
            dest.close()
        os.replace(tmp, target)

    @property
    def schema_version(self) -> int:
        with self._read() as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

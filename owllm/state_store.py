"""The StateStore: runtime truth (models, envs, servers, events) in one SQLite file.

Design notes:

* One short-lived connection per operation.  Connections are cheap (tens of µs) and this keeps
  the store safe to share between threads and forked pytest-xdist workers.
* WAL journal plus a generous busy timeout, and every write in ``BEGIN IMMEDIATE`` so writers
  queue on SQLite's lock instead of failing with ``database is locked`` on upgrade.
* Versioned schema (``PRAGMA user_version``) with forward-only migrations.  Before migrating a
  file that holds data, a copy is written next to it (``state.db.bak-v<N>``).  A corrupt file or
  a schema newer than this code is refused with a clear error; nothing is ever deleted.
* Every status change and error is appended to ``events`` with its time and pid, so what
  happened (and which process did it) can be read back after a crash.
* A store that cannot be written says why (:class:`StateStoreFault`): a full disk, a
  read-only folder or file, another process holding the write lock, a damaged file — each
  with its own fix.  Only a damaged file is called damaged.
* Reads work where writes cannot: on a read-only home or a full disk SQLite cannot create
  its ``-shm`` file, so reads fall back to a read-only connection (``mode=ro``), or to an
  ``immutable`` one when no ``-wal`` holds commits the main file lacks.
* Private files: the database (and so its ``-wal``/``-shm``, which SQLite creates with the
  database's mode), its backups and its lock are 0600; it holds prompts, errors and tokens.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import Timeout

from owllm.errors import StateStoreError
from owllm.paths import PRIVATE_FILE_MODE, Home, make_private, private_dir, resolve_home
from owllm.store_faults import (
    FULL,
    IO,
    READ_ONLY,
    StateStoreFault,
    home_lock,
    store_fault,
)

BUSY_TIMEOUT_MS = 60_000
# Why a write failed, for which a read may still be served from the file as it is
# (see StateStore._snapshot): not when it is busy or damaged.
_READABLE_WHEN = frozenset({FULL, READ_ONLY, IO})

# Status values.  Plain strings so that the JSON and SQL stay readable.
ENV_BUILDING, ENV_READY, ENV_FAILED = "BUILDING", "READY", "FAILED"
SERVER_STARTING, SERVER_RUNNING, SERVER_STOPPED = "STARTING", "RUNNING", "STOPPED"
SERVER_FAILED, SERVER_CRASHED = "FAILED", "CRASHED"

# Forward migrations: MIGRATIONS[i] takes a database from version i to i + 1.
MIGRATIONS: tuple[str, ...] = (
    # v1: the tables the guide names.
    """
    CREATE TABLE models (
        model_id   TEXT PRIMARY KEY,
        backend    TEXT NOT NULL,
        model_path TEXT NOT NULL,
        env_key    TEXT,
        params     TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE envs (
        env_key        TEXT PRIMARY KEY,
        status         TEXT NOT NULL,
        path           TEXT,
        python_path    TEXT,
        torch_version  TEXT,
        cuda_available INTEGER,
        fingerprint    TEXT,
        last_error     TEXT,
        created_at     TEXT NOT NULL,
        updated_at     TEXT NOT NULL
    );
    CREATE TABLE servers (
        model_id   TEXT PRIMARY KEY,
        status     TEXT NOT NULL,
        pid        INTEGER,
        port       INTEGER,
        host       TEXT,
        started_at TEXT,
        last_error TEXT,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE events (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        ts      TEXT NOT NULL,
        pid     INTEGER NOT NULL,
        kind    TEXT NOT NULL,
        subject TEXT NOT NULL,
        status  TEXT,
        message TEXT
    );
    """,
    # v2: what process supervision and env provisioning need beyond v1.
    """
    ALTER TABLE envs ADD COLUMN spec TEXT;
    ALTER TABLE envs ADD COLUMN packages TEXT;
    ALTER TABLE envs ADD COLUMN ready_at TEXT;
    ALTER TABLE servers ADD COLUMN kind TEXT NOT NULL DEFAULT 'model';
    ALTER TABLE servers ADD COLUMN pgid INTEGER;
    ALTER TABLE servers ADD COLUMN pid_create_time REAL;
    ALTER TABLE servers ADD COLUMN url TEXT;
    ALTER TABLE servers ADD COLUMN env_key TEXT;
    ALTER TABLE servers ADD COLUMN log_path TEXT;
    ALTER TABLE servers ADD COLUMN stopped_at TEXT;
    ALTER TABLE servers ADD COLUMN extra TEXT;
    ALTER TABLE events ADD COLUMN data TEXT;
    CREATE INDEX events_subject ON events (kind, subject, id);
    CREATE INDEX servers_status ON servers (status);
    CREATE INDEX envs_status ON envs (status);
    """,
    # v3: what an env learned about the host it runs on (CPU kernel decisions).
    """
    ALTER TABLE envs ADD COLUMN extra TEXT;
    """,
    # v4: the tool server's row key becomes one no model id can match (tools/manage.py NAME);
    # a model called "tool-server" (kind 'model') keeps its row.
    """
    UPDATE servers SET model_id = 'tools:tool-server'
        WHERE model_id = 'tool-server' AND kind = 'tools';
    """,
    # v5: process identity that no wall-clock step changes (servers/process.py Identity):
    # the start time in clock ticks since boot, and which boot.
    """
    ALTER TABLE servers ADD COLUMN pid_start_ticks INTEGER;
    ALTER TABLE servers ADD COLUMN boot_id TEXT;
    """,
    # v6: which run owns a server (servers/reaper.py): the run's watchdog stops what its run
    # owns when the run dies, and `owllm state` shows the owner.  A table of its own, since
    # the manager rewrites a server row's extra on every change.  kept = 1: handed over.
    """
    CREATE TABLE server_owners (
        model_id        TEXT PRIMARY KEY,
        run_id          TEXT NOT NULL,
        kind            TEXT NOT NULL,
        pid             INTEGER NOT NULL,
        pid_create_time REAL,
        kept            INTEGER NOT NULL DEFAULT 0,
        since           TEXT NOT NULL
    );
    CREATE INDEX server_owners_run ON server_owners (run_id);
    """,
    # v7: the owner's identity that no wall-clock step changes, as v5 added for servers (a
    # watchdog that compared create times would take an NTP step for its run's death).
    """
    ALTER TABLE server_owners ADD COLUMN pid_start_ticks INTEGER;
    ALTER TABLE server_owners ADD COLUMN boot_id TEXT;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_JSON_COLUMNS = frozenset({"params", "spec", "packages", "extra", "data"})
_ENV_FIELDS = frozenset({"status", "path", "python_path", "torch_version", "cuda_available",
                         "fingerprint", "last_error", "spec", "packages", "ready_at", "extra"})
_SERVER_FIELDS = frozenset({"status", "pid", "port", "host", "started_at", "last_error", "kind",
                            "pgid", "pid_create_time", "url", "env_key", "log_path", "stopped_at",
                            "extra", "pid_start_ticks", "boot_id"})

def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _encode(column: str, value: Any) -> Any:
    if column in _JSON_COLUMNS and value is not None:
        return json.dumps(value, sort_keys=True)
    if column == "cuda_available" and value is not None:
        return int(bool(value))
    return value


def _row(row: sqlite3.Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    out = dict(row)
    for column in _JSON_COLUMNS & out.keys():
        if out[column] is not None:
            out[column] = json.loads(out[column])
    if out.get("cuda_available") is not None:
        out["cuda_available"] = bool(out["cuda_available"])
    return out


class StateStore:
    """SQLite-backed runtime state.  Every method returns plain dicts (or lists of them)."""

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

    # -- events ---------------------------------------------------------------------------

    @staticmethod
    def _event(conn: sqlite3.Connection, kind: str, subject: str, status: str | None,
               message: str | None, data: Mapping[str, Any] | None = None) -> None:
        conn.execute(
            "INSERT INTO events (ts, pid, kind, subject, status, message, data) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (now_iso(), os.getpid(), kind, subject, status, message,
             json.dumps(dict(data), sort_keys=True) if data is not None else None),
        )

    def record_event(self, kind: str, subject: str, status: str | None = None,
                     message: str | None = None, data: Mapping[str, Any] | None = None) -> None:
        """Append one event (kind: 'model', 'env', 'server', 'tools', …)."""
        with self._write() as conn:
            self._event(conn, kind, subject, status, message, data)

    def list_events(self, kind: str | None = None, subject: str | None = None,
                    status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Most recent events first."""
        clauses, args = [], []
        for column, value in (("kind", kind), ("subject", subject), ("status", status)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._read() as conn:
            rows = conn.execute(f"SELECT * FROM events {where} ORDER BY id DESC LIMIT ?",
                                (*args, limit)).fetchall()
        return [r for r in map(_row, rows) if r is not None]

    # -- models ---------------------------------------------------------------------------

    def upsert_model(self, model_id: str, backend: str, model_path: str,
                     env_key: str | None = None, params: Mapping[str, Any] | None = None
                     ) -> dict[str, Any]:
        """Register a model, or update its registration; returns the stored row."""
        stamp = now_iso()
        with self._write() as conn:
            existed = conn.execute("SELECT 1 FROM models WHERE model_id = ?",
                                   (model_id,)).fetchone()
            conn.execute(
                "INSERT INTO models (model_id, backend, model_path, env_key, params, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(model_id) DO UPDATE SET"
                " backend = excluded.backend, model_path = excluded.model_path,"
                " env_key = excluded.env_key, params = excluded.params,"
                " updated_at = excluded.updated_at",
                (model_id, backend, str(model_path), env_key,
                 json.dumps(dict(params or {}), sort_keys=True), stamp, stamp),
            )
            if not existed:
                self._event(conn, "model", model_id, "REGISTERED",
                            f"backend={backend} env_key={env_key}")
            row = conn.execute("SELECT * FROM models WHERE model_id = ?", (model_id,)).fetchone()
        result = _row(row)
        assert result is not None
        return result

    def get_model(self, model_id: str) -> dict[str, Any] | None:
        with self._read() as conn:
            return _row(conn.execute("SELECT * FROM models WHERE model_id = ?",
                                     (model_id,)).fetchone())

    def list_models(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM models ORDER BY model_id").fetchall()
        return [r for r in map(_row, rows) if r is not None]

    def delete_model(self, model_id: str) -> bool:
        with self._write() as conn:
            deleted = conn.execute("DELETE FROM models WHERE model_id = ?", (model_id,)).rowcount
            if deleted:
                self._event(conn, "model", model_id, "UNREGISTERED", None)
        return bool(deleted)

    # -- envs and servers share one upsert shape ------------------------------------------

    def _upsert(self, table: str, key_column: str, key: str, allowed: frozenset[str],
                event_kind: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(fields) - allowed
        if unknown:
            raise TypeError(f"unknown {table} field(s): {', '.join(sorted(unknown))}")
        stamp = now_iso()
        with self._write() as conn:
            old = _row(conn.execute(f"SELECT * FROM {table} WHERE {key_column} = ?",
                                    (key,)).fetchone())
            if old is None:
                if "status" not in fields:
                    raise TypeError(f"a new {table} row needs a status")
                columns = [key_column, *fields, "updated_at"]
                values = [key, *(_encode(c, v) for c, v in fields.items()), stamp]
                if table == "envs":
                    columns.append("created_at")
                    values.append(stamp)
                conn.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                             f"({', '.join('?' * len(columns))})", values)
            elif fields:
                assignments = ", ".join(f"{c} = ?" for c in fields)
                conn.execute(f"UPDATE {table} SET {assignments}, updated_at = ? "
                             f"WHERE {key_column} = ?",
                             [*(_encode(c, v) for c, v in fields.items()), stamp, key])
            status = fields.get("status")
            changed = status is not None and (old is None or old.get("status") != status)
            error = fields.get("last_error")
            if changed or (error and (old is None or old.get("last_error") != error)):
                detail = {k: v for k, v in fields.items()
                          if k in ("pid", "port", "python_path", "fingerprint")}
                self._event(conn, event_kind, key, status or (old or {}).get("status"),
                            error, detail or None)
            row = conn.execute(f"SELECT * FROM {table} WHERE {key_column} = ?",
                               (key,)).fetchone()
        result = _row(row)
        assert result is not None
        return result

    def _list(self, table: str, key_column: str, **filters: Any) -> list[dict[str, Any]]:
        clauses = [f"{column} = ?" for column, value in filters.items() if value is not None]
        args = [value for value in filters.values() if value is not None]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._read() as conn:
            rows = conn.execute(f"SELECT * FROM {table} {where} ORDER BY {key_column}",
                                args).fetchall()
        return [r for r in map(_row, rows) if r is not None]

    def _delete(self, table: str, key_column: str, key: str, event_kind: str) -> bool:
        with self._write() as conn:
            deleted = conn.execute(f"DELETE FROM {table} WHERE {key_column} = ?",
                                   (key,)).rowcount
            if deleted:
                self._event(conn, event_kind, key, "REMOVED", None)
        return bool(deleted)

    # -- envs -----------------------------------------------------------------------------

    def upsert_env(self, env_key: str, **fields: Any) -> dict[str, Any]:
        """Create or update an env row.  Fields: status, path, python_path, torch_version,
        cuda_available, fingerprint, last_error, spec, packages, ready_at."""
        return self._upsert("envs", "env_key", env_key, _ENV_FIELDS, "env", fields)

    def get_env(self, env_key: str) -> dict[str, Any] | None:
        with self._read() as conn:
            return _row(conn.execute("SELECT * FROM envs WHERE env_key = ?",
                                     (env_key,)).fetchone())

    def list_envs(self, status: str | None = None) -> list[dict[str, Any]]:
        return self._list("envs", "env_key", status=status)

    def delete_env(self, env_key: str) -> bool:
        return self._delete("envs", "env_key", env_key, "env")

    def record_env_decision(self, env_key: str, setting: str, decision: dict[str, Any]) -> None:
        """Remember what an env decided about this host (``extra.decisions[setting]``), e.g.
        that vLLM's bf16 kernels crash here; read back by :meth:`env_decision`."""
        with self._write() as conn:
            row = _row(conn.execute("SELECT * FROM envs WHERE env_key = ?",
                                    (env_key,)).fetchone())
            if row is None:
                return  # the env was removed meanwhile: nothing to attach the decision to
            extra = row.get("extra") or {}
            extra.setdefault("decisions", {})[setting] = {**decision, "at": now_iso()}
            conn.execute("UPDATE envs SET extra = ?, updated_at = ? WHERE env_key = ?",
                         (_encode("extra", extra), now_iso(), env_key))
            self._event(conn, "env", env_key, row.get("status"),
                        f"{setting} = {decision.get('value')}: {decision.get('reason')}",
                        {"decision": setting})

    def env_decision(self, env_key: str, setting: str) -> dict[str, Any] | None:
        row = self.get_env(env_key)
        decisions = ((row or {}).get("extra") or {}).get("decisions") or {}
        found = decisions.get(setting)
        return found if isinstance(found, dict) else None

    # -- servers --------------------------------------------------------------------------

    def upsert_server(self, model_id: str, **fields: Any) -> dict[str, Any]:
        """Create or update a server row (one per model id; the tool server uses its own
        name with ``kind='tools'``).  Fields: status, pid, pgid, pid_create_time,
        pid_start_ticks, boot_id, port, host, url, env_key, log_path, started_at, stopped_at,
        last_error, kind, extra."""
        return self._upsert("servers", "model_id", model_id, _SERVER_FIELDS, "server", fields)

    def get_server(self, model_id: str) -> dict[str, Any] | None:
        with self._read() as conn:
            return _row(conn.execute("SELECT * FROM servers WHERE model_id = ?",
                                     (model_id,)).fetchone())

    def list_servers(self, status: str | None = None, kind: str | None = None
                     ) -> list[dict[str, Any]]:
        return self._list("servers", "model_id", status=status, kind=kind)

    def delete_server(self, model_id: str) -> bool:
        return self._delete("servers", "model_id", model_id, "server")

    # -- server owners (servers/reaper.py) ------------------------------------------------

    def set_server_owner(self, model_id: str, owner: Mapping[str, Any] | None
                         ) -> dict[str, Any] | None:
        """Record which run owns the server ``model_id`` (keys ``run_id``, ``kind``, ``kept``
        and the owning process: ``pid``, ``pid_create_time``, ``pid_start_ticks``,
        ``boot_id``), replacing any earlier owner; None: owned by nobody (``owllm server
        start``: meant to outlive the command that started it)."""
        with self._write() as conn:
            if owner is None:
                conn.execute("DELETE FROM server_owners WHERE model_id = ?", (model_id,))
                return None
            conn.execute(
                "INSERT OR REPLACE INTO server_owners (model_id, run_id, kind, pid, "
                "pid_create_time, pid_start_ticks, boot_id, kept, since) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (model_id, owner["run_id"], owner["kind"], int(owner["pid"]),
                 owner.get("pid_create_time"), owner.get("pid_start_ticks"),
                 owner.get("boot_id"), int(bool(owner.get("kept"))), now_iso()))
            row = conn.execute("SELECT * FROM server_owners WHERE model_id = ?",
                               (model_id,)).fetchone()
        return _owner_row(row)

    def get_server_owner(self, model_id: str) -> dict[str, Any] | None:
        rows = [r for r in self.list_server_owners() if r["model_id"] == model_id]
        return rows[0] if rows else None

    def list_server_owners(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Owner rows (of one run, or all), by server name."""
        where, args = ("WHERE run_id = ?", (run_id,)) if run_id else ("", ())
        with self._read() as conn:
            try:
                rows = conn.execute(f"SELECT * FROM server_owners {where} ORDER BY model_id",
                                    args).fetchall()
            except sqlite3.OperationalError:
                if self.writable:
                    raise
                return []  # a read-only store on an older schema: no owners recorded there
        return [r for r in map(_owner_row, rows) if r is not None]

    def release_server_owner(self, model_id: str, run_id: str) -> bool:
        """Forget ``run_id``'s ownership of ``model_id`` (only if that run still owns it)."""
        with self._write() as conn:
            return bool(conn.execute("DELETE FROM server_owners WHERE model_id = ? AND "
                                     "run_id = ?", (model_id, run_id)).rowcount)

    def release_run(self, run_id: str) -> int:
        """The run is over: forget what it owned, except what it handed over (kept)."""
        with self._write() as conn:
            return int(conn.execute("DELETE FROM server_owners WHERE run_id = ? AND kept = 0",
                                    (run_id,)).rowcount)


def _owner_row(row: sqlite3.Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    out = dict(row)
    out["kept"] = bool(out["kept"])
    return out


def get_state_store(home: str | os.PathLike[str] | Home | None = None,
                    config_path: str | os.PathLike[str] | None = None) -> StateStore:
    """The StateStore of a home folder (resolved as :func:`owllm.paths.resolve_home` says)."""
    resolved = home if isinstance(home, Home) else resolve_home(home, config_path)
    return StateStore(resolved.state_db)


def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` seconds pass (test/CLI helper)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())

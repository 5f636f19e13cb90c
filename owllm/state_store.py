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
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from owllm.errors import StateStoreError
from owllm.paths import Home, resolve_home

BUSY_TIMEOUT_MS = 60_000

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
)
SCHEMA_VERSION = len(MIGRATIONS)

_JSON_COLUMNS = frozenset({"params", "spec", "packages", "extra", "data"})
_ENV_FIELDS = frozenset({"status", "path", "python_path", "torch_version", "cuda_available",
                         "fingerprint", "last_error", "spec", "packages", "ready_at", "extra"})
_SERVER_FIELDS = frozenset({"status", "pid", "port", "host", "started_at", "last_error", "kind",
                            "pgid", "pid_create_time", "url", "env_key", "log_path", "stopped_at",
                            "extra"})


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
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        # Creating the file, switching it to WAL and migrating need SQLite's exclusive lock,
        # which its busy timeout does not cover: two processes opening a new store at once
        # got "database is locked".  One opener at a time does this (the fast path, an
        # up-to-date file, only reads).
        lock = FileLock(str(self.db_path.with_name(self.db_path.name + ".init.lock")),
                        timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            with lock:
                self._migrate()
        except Timeout:
            raise StateStoreError(
                f"state store {self.db_path}: another process has been opening it for over "
                f"{BUSY_TIMEOUT_MS // 1000} s", hint="look for a stuck owllm process using "
                "this home") from None

    # -- plumbing -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_MS / 1000,
                                   isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            # In WAL mode NORMAL loses nothing when a process is killed (-9 included); only an
            # OS crash or power loss can drop the last transactions.  FULL halves write speed.
            conn.execute("PRAGMA synchronous = NORMAL")
            return conn
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(exc) from exc

    def _corrupt(self, exc: BaseException) -> StateStoreError:
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            return StateStoreError(
                f"state store {self.db_path} is busy: {exc} (another process held its write "
                f"lock for over {BUSY_TIMEOUT_MS // 1000} s)",
                hint="retry; if it persists, look for a stuck owllm process using this home")
        return StateStoreError(
            f"state store {self.db_path} cannot be read: {exc}",
            hint="the file is left untouched; move it aside to start with a fresh state "
                 "(envs and servers are re-detected), or restore a state.db.bak-v* copy",
        )

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            yield conn
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(exc) from exc
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(exc) from exc
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
                conn.execute("ROLLBACK")
            raise self._corrupt(exc) from exc
        finally:
            conn.close()

    def _backup(self, conn: sqlite3.Connection, version: int) -> None:
        target = self.db_path.with_name(f"{self.db_path.name}.bak-v{version}")
        if target.exists():
            return
        tmp = target.with_name(target.name + ".tmp")
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
        name with ``kind='tools'``).  Fields: status, pid, pgid, pid_create_time, port, host,
        url, env_key, log_path, started_at, stopped_at, last_error, kind, extra."""
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

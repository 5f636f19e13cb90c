"""The StateStore: runtime truth (models, envs, servers, events) in one SQLite file.

The queries live here; the file plumbing in :mod:`owllm._state_db`, the schema and the status
enums in :mod:`owllm._state_schema` (re-exported here: this is the public import path).

Design notes:

* One short-lived connection per operation.  Connections are cheap (tens of µs) and this keeps
  the store safe to share between threads and forked pytest-xdist workers.
* WAL journal plus a generous busy timeout, and every write in ``BEGIN IMMEDIATE`` so writers
  queue on SQLite's lock instead of failing with ``database is locked`` on upgrade.
* Versioned schema (``PRAGMA user_version``) with forward-only migrations.  Before migrating a
  file that holds data, a copy is written next to it (``state.db.bak-v<N>``).  A corrupt file or
  a schema newer than this code is refused with a clear error; nothing is ever deleted.
* Server rows are keyed by (kind, name): ``kind`` is ``model`` (the name is the model id,
  kept in the ``model_id`` column and key of rows) or ``tools`` (the tool server).
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
from collections.abc import Mapping
from typing import Any

from owllm._state_db import BUSY_TIMEOUT_MS, SQLiteFile, now_iso
from owllm._state_schema import (
    LIVE_STATUSES,
    MIGRATIONS,
    MODEL_KIND,
    SCHEMA_VERSION,
    TOOLS_KIND,
    EnvStatus,
    ServerStatus,
)
from owllm.paths import Home, resolve_home

__all__ = ["BUSY_TIMEOUT_MS", "ENV_BUILDING", "ENV_FAILED", "ENV_READY", "LIVE_STATUSES",
           "MIGRATIONS", "MODEL_KIND", "SCHEMA_VERSION", "TOOLS_KIND", "EnvStatus",
           "ServerStatus", "StateStore", "get_state_store", "now_iso", "server_subject"]

# The env statuses under their older names (envs/registry.py, tests).
ENV_BUILDING, ENV_READY, ENV_FAILED = EnvStatus.BUILDING, EnvStatus.READY, EnvStatus.FAILED

_JSON_COLUMNS = frozenset({"params", "spec", "packages", "extra", "data"})
_ENV_FIELDS = frozenset({"status", "path", "python_path", "torch_version", "cuda_available",
                         "fingerprint", "last_error", "spec", "packages", "ready_at", "extra"})
_SERVER_FIELDS = frozenset({"status", "pid", "port", "host", "started_at", "last_error",
                            "pgid", "pid_create_time", "url", "env_key", "log_path", "stopped_at",
                            "extra", "pid_start_ticks", "boot_id"})


def server_subject(kind: str, name: str) -> str:
    """A server's ``events.subject``: its name for a model server (as before kinds), else
    ``kind:name`` (``tools:tool-server``), so a model's events never read as another's."""
    return name if kind == MODEL_KIND else f"{kind}:{name}"


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


class StateStore(SQLiteFile):
    """SQLite-backed runtime state.  Every method returns plain dicts (or lists of them)."""

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

    def _upsert(self, table: str, key: Mapping[str, str], allowed: frozenset[str],
                event_kind: str, subject: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(fields) - allowed
        if unknown:
            raise TypeError(f"unknown {table} field(s): {', '.join(sorted(unknown))}")
        stamp = now_iso()
        where = " AND ".join(f"{column} = ?" for column in key)
        with self._write() as conn:
            old = _row(conn.execute(f"SELECT * FROM {table} WHERE {where}",
                                    tuple(key.values())).fetchone())
            if old is None:
                if "status" not in fields:
                    raise TypeError(f"a new {table} row needs a status")
                columns = [*key, *fields, "updated_at"]
                values = [*key.values(), *(_encode(c, v) for c, v in fields.items()), stamp]
                if table == "envs":
                    columns.append("created_at")
                    values.append(stamp)
                conn.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                             f"({', '.join('?' * len(columns))})", values)
            elif fields:
                assignments = ", ".join(f"{c} = ?" for c in fields)
                conn.execute(f"UPDATE {table} SET {assignments}, updated_at = ? WHERE {where}",
                             [*(_encode(c, v) for c, v in fields.items()), stamp,
                              *key.values()])
            status = fields.get("status")
            changed = status is not None and (old is None or old.get("status") != status)
            error = fields.get("last_error")
            if changed or (error and (old is None or old.get("last_error") != error)):
                detail = {k: v for k, v in fields.items()
                          if k in ("pid", "port", "python_path", "fingerprint")}
                self._event(conn, event_kind, subject, status or (old or {}).get("status"),
                            error, detail or None)
            row = conn.execute(f"SELECT * FROM {table} WHERE {where}",
                               tuple(key.values())).fetchone()
        result = _row(row)
        assert result is not None
        return result

    def _list(self, table: str, order: str, **filters: Any) -> list[dict[str, Any]]:
        clauses = [f"{column} = ?" for column, value in filters.items() if value is not None]
        args = [value for value in filters.values() if value is not None]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._read() as conn:
            rows = conn.execute(f"SELECT * FROM {table} {where} ORDER BY {order}",
                                args).fetchall()
        return [r for r in map(_row, rows) if r is not None]

    def _delete(self, table: str, key: Mapping[str, str], event_kind: str,
                subject: str) -> bool:
        where = " AND ".join(f"{column} = ?" for column in key)
        with self._write() as conn:
            deleted = conn.execute(f"DELETE FROM {table} WHERE {where}",
                                   tuple(key.values())).rowcount
            if deleted:
                self._event(conn, event_kind, subject, "REMOVED", None)
        return bool(deleted)

    # -- envs -----------------------------------------------------------------------------

    def upsert_env(self, env_key: str, **fields: Any) -> dict[str, Any]:
        """Create or update an env row.  Fields: status, path, python_path, torch_version,
        cuda_available, fingerprint, last_error, spec, packages, ready_at."""
        return self._upsert("envs", {"env_key": env_key}, _ENV_FIELDS, "env", env_key,
                            fields)

    def get_env(self, env_key: str) -> dict[str, Any] | None:
        with self._read() as conn:
            return _row(conn.execute("SELECT * FROM envs WHERE env_key = ?",
                                     (env_key,)).fetchone())

    def list_envs(self, status: str | None = None) -> list[dict[str, Any]]:
        return self._list("envs", "env_key", status=status)

    def delete_env(self, env_key: str) -> bool:
        return self._delete("envs", {"env_key": env_key}, "env", env_key)

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

    # -- servers: one row per (kind, name) ---------------------------------------------

    def upsert_server(self, model_id: str, kind: str = MODEL_KIND,
                      **fields: Any) -> dict[str, Any]:
        """Create or update the server row ``(kind, model_id)``: a model's server (kind
        ``model``, named by the model id) or another managed server (kind ``tools``: the
        tool server).  Fields: status, pid, pgid, pid_create_time, pid_start_ticks, boot_id,
        port, host, url, env_key, log_path, started_at, stopped_at, last_error, extra."""
        return self._upsert("servers", {"kind": kind, "model_id": model_id}, _SERVER_FIELDS,
                            "server", server_subject(kind, model_id), fields)

    def get_server(self, model_id: str, kind: str = MODEL_KIND) -> dict[str, Any] | None:
        """The row of the server ``(kind, model_id)``; by default a model's."""
        with self._read() as conn:
            return _row(conn.execute("SELECT * FROM servers WHERE kind = ? AND model_id = ?",
                                     (kind, model_id)).fetchone())

    def list_servers(self, status: str | None = None, kind: str | None = None
                     ) -> list[dict[str, Any]]:
        """Server rows (of one status, of one kind, or all), by kind then name."""
        return self._list("servers", "kind, model_id", status=status, kind=kind)

    def delete_server(self, model_id: str, kind: str = MODEL_KIND) -> bool:
        return self._delete("servers", {"kind": kind, "model_id": model_id}, "server",
                            server_subject(kind, model_id))

    # -- server owners (servers/owners.py) ------------------------------------------------

    def set_server_owner(self, model_id: str, owner: Mapping[str, Any] | None,
                         kind: str = MODEL_KIND) -> dict[str, Any] | None:
        """Record which run owns the server ``(kind, model_id)`` (keys ``run_id``, ``kind``
        — the run's —, ``kept`` and the owning process: ``pid``, ``pid_create_time``,
        ``pid_start_ticks``, ``boot_id``), replacing any earlier owner; None: owned by
        nobody (``owllm server start``: meant to outlive the command that started it)."""
        with self._write() as conn:
            if owner is None:
                conn.execute("DELETE FROM server_owners WHERE server_kind = ? AND model_id = ?",
                             (kind, model_id))
                return None
            conn.execute(
                "INSERT OR REPLACE INTO server_owners (server_kind, model_id, run_id, kind, "
                "pid, pid_create_time, pid_start_ticks, boot_id, kept, since) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (kind, model_id, owner["run_id"], owner["kind"], int(owner["pid"]),
                 owner.get("pid_create_time"), owner.get("pid_start_ticks"),
                 owner.get("boot_id"), int(bool(owner.get("kept"))), now_iso()))
            row = conn.execute("SELECT * FROM server_owners WHERE server_kind = ? AND "
                               "model_id = ?", (kind, model_id)).fetchone()
        return _owner_row(row)

    def get_server_owner(self, model_id: str, kind: str = MODEL_KIND
                         ) -> dict[str, Any] | None:
        rows = [r for r in self.list_server_owners()
                if r["model_id"] == model_id and r["server_kind"] == kind]
        return rows[0] if rows else None

    def list_server_owners(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Owner rows (of one run, or all), by server kind and name."""
        where, args = ("WHERE run_id = ?", (run_id,)) if run_id else ("", ())
        with self._read() as conn:
            try:
                rows = conn.execute(f"SELECT * FROM server_owners {where} "
                                    f"ORDER BY server_kind, model_id", args).fetchall()
            except sqlite3.OperationalError:
                if self.writable:
                    raise
                return []  # a read-only store on an older schema: no owners recorded there
        return [r for r in map(_owner_row, rows) if r is not None]

    def release_server_owner(self, model_id: str, run_id: str,
                             kind: str = MODEL_KIND) -> bool:
        """Forget ``run_id``'s ownership of ``(kind, model_id)`` (only if that run still
        owns it)."""
        with self._write() as conn:
            return bool(conn.execute(
                "DELETE FROM server_owners WHERE server_kind = ? AND model_id = ? AND "
                "run_id = ?", (kind, model_id, run_id)).rowcount)

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

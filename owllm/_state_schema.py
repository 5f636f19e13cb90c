"""The StateStore's schema: status values and the forward migrations (``PRAGMA
user_version``).  Its own module so that the queries (:mod:`owllm.state_store`) and the SQLite
plumbing (:mod:`owllm._state_db`) read without 200 lines of DDL between them."""

from __future__ import annotations

from enum import StrEnum


class ServerStatus(StrEnum):
    """Where a managed server (model server, tool server) is in its life.

    A ``StrEnum``: a member is the plain string the SQL rows and the JSON output hold
    (``ServerStatus.RUNNING == "RUNNING"``), so rows read back compare with members."""

    STARTING = "STARTING"  # a start claimed the row (and its port); maybe not launched yet
    RUNNING = "RUNNING"  # ready: answered its readiness check
    STOPPED = "STOPPED"  # stopped on purpose (or a start was abandoned before the launch)
    FAILED = "FAILED"  # a start failed; ``last_error`` says why
    CRASHED = "CRASHED"  # its process went away without being stopped


# Statuses of a server that has (or is about to have) a live process.
LIVE_STATUSES: tuple[ServerStatus, ...] = (ServerStatus.STARTING, ServerStatus.RUNNING)


class EnvStatus(StrEnum):
    """Where an env's provisioning is (``envs`` rows)."""

    BUILDING = "BUILDING"
    READY = "READY"
    FAILED = "FAILED"


# Server kinds: the first half of a server row's key (kind, name).
MODEL_KIND, TOOLS_KIND = "model", "tools"

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
    # v4: the tool server's row key becomes one no model id can match (then tools/manage.py NAME;
    # v8 made the key (kind, name) instead); a model called "tool-server" keeps its row.
    """
    UPDATE servers SET model_id = 'tools:tool-server'
        WHERE model_id = 'tool-server' AND kind = 'tools';
    """,
    # v5: process identity that no wall-clock step changes (servers/identity.py Identity):
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
    # v8: a server row is keyed by (kind, name): a model called "tool-server" and the tool
    # server (kind 'tools') are two rows by construction, with no reserved name (the v4
    # "tools:tool-server" key goes back to plain "tool-server").  ``model_id`` stays the
    # column's name (the server's name within its kind), as rows and JSON output keep it.
    # server_owners gains the server's kind the same way (its ``kind`` is the run's).
    """
    CREATE TABLE servers_v8 (
        model_id TEXT NOT NULL, status TEXT NOT NULL, pid INTEGER, port INTEGER, host TEXT,
        started_at TEXT, last_error TEXT, updated_at TEXT NOT NULL,
        kind TEXT NOT NULL DEFAULT 'model', pgid INTEGER, pid_create_time REAL, url TEXT,
        env_key TEXT, log_path TEXT, stopped_at TEXT, extra TEXT, pid_start_ticks INTEGER,
        boot_id TEXT,
        PRIMARY KEY (kind, model_id)
    );
    INSERT INTO servers_v8 (kind, model_id, status, pid, port, host, started_at, last_error,
                            updated_at, pgid, pid_create_time, url, env_key, log_path,
                            stopped_at, extra, pid_start_ticks, boot_id)
        SELECT kind, CASE WHEN kind = 'tools' AND model_id = 'tools:tool-server'
                          THEN 'tool-server' ELSE model_id END,
               status, pid, port, host, started_at, last_error, updated_at, pgid,
               pid_create_time, url, env_key, log_path, stopped_at, extra, pid_start_ticks,
               boot_id
        FROM servers;
    DROP TABLE servers;
    ALTER TABLE servers_v8 RENAME TO servers;
    CREATE INDEX servers_status ON servers (status);
    CREATE TABLE server_owners_v8 (
        model_id TEXT NOT NULL, run_id TEXT NOT NULL, kind TEXT NOT NULL,
        pid INTEGER NOT NULL, pid_create_time REAL, kept INTEGER NOT NULL DEFAULT 0,
        since TEXT NOT NULL, pid_start_ticks INTEGER, boot_id TEXT,
        server_kind TEXT NOT NULL DEFAULT 'model',
        PRIMARY KEY (server_kind, model_id)
    );
    INSERT INTO server_owners_v8 (server_kind, model_id, run_id, kind, pid, pid_create_time,
                                  kept, since, pid_start_ticks, boot_id)
        SELECT CASE WHEN model_id = 'tools:tool-server' THEN 'tools' ELSE 'model' END,
               CASE WHEN model_id = 'tools:tool-server' THEN 'tool-server' ELSE model_id END,
               run_id, kind, pid, pid_create_time, kept, since, pid_start_ticks, boot_id
        FROM server_owners;
    DROP TABLE server_owners;
    ALTER TABLE server_owners_v8 RENAME TO server_owners;
    CREATE INDEX server_owners_run ON server_owners (run_id);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

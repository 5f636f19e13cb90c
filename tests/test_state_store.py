from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
from pathlib import Path

import pytest

from owllm.errors import StateStoreError
from owllm.paths import resolve_home
from owllm.state_store import (
    LIVE_STATUSES,
    MIGRATIONS,
    SCHEMA_VERSION,
    TOOLS_KIND,
    ServerStatus,
    StateStore,
    get_state_store,
)


def _writer(db: str, worker: int, count: int, errors: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = StateStore(db)
    try:
        for i in range(count):
            store.upsert_model(f"m{worker}-{i}", "transformers", f"/models/{i}",
                               "torch-cpu-transformers", {"worker": worker, "i": i})
            if i % 25 == 0:
                store.list_models()  # readers interleaved with writers
                store.upsert_server(f"m{worker}", status="RUNNING", pid=os.getpid(), port=i)
    except Exception as exc:  # reported to the parent, which fails the test
        errors.put(repr(exc))


def test_four_processes_250_upserts_each(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    StateStore(db)
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(db, w, 250, errors)) for w in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    assert errors.empty(), errors.get()
    models = StateStore(db).list_models()
    assert len(models) == 1000
    assert {m["model_id"] for m in models} == {f"m{w}-{i}" for w in range(4) for i in range(250)}
    assert StateStore(db).get_model("m3-249")["params"] == {"worker": 3, "i": 249}


def _opener(db: str, start: object, errors: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    start.wait()  # type: ignore[attr-defined]
    try:
        StateStore(db).upsert_model(f"m{os.getpid()}", "transformers", "x", "k", {})
    except Exception as exc:
        errors.put(repr(exc))


@pytest.mark.parametrize("round_", range(5))
def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path: Path,
                                                           round_: int) -> None:
    """Regression: two pytest workers opening a fresh home's store at the same moment got
    "database is locked" from the WAL switch (not covered by SQLite's busy timeout)."""
    db = str(tmp_path / "state.db")
    ctx = multiprocessing.get_context("fork")
    start, errors = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_opener, args=(db, start, errors)) for _ in range(16)]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert errors.empty(), errors.get()
    assert len(StateStore(db).list_models()) == 16


def test_guide_api_returns_plain_dicts(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.db")
    row = store.upsert_model(model_id="my_model", backend="transformers",
                             model_path="path/to/model",
                             env_key="torch-cu121-transformers-bnb", params={"use_4bit": True})
    assert row["model_id"] == "my_model" and row["params"] == {"use_4bit": True}
    assert store.get_model("my_model") == row
    assert store.get_model("other") is None
    assert [m["model_id"] for m in store.list_models()] == ["my_model"]

    store.upsert_env("torch-cpu-transformers", status="BUILDING")
    store.upsert_env("torch-cpu-transformers", status="READY", torch_version="2.13.0+cpu",
                     cuda_available=False, python_path="/x/bin/python")
    store.upsert_env("vllm-cpu", status="FAILED", last_error="boom")
    assert [e["env_key"] for e in store.list_envs(status="READY")] == ["torch-cpu-transformers"]
    env = store.get_env("torch-cpu-transformers")
    assert env is not None and env["cuda_available"] is False
    assert env["torch_version"] == "2.13.0+cpu"
    assert len(store.list_envs()) == 2

    store.upsert_server("my_model", status="STARTING", pid=123, port=10500)
    store.upsert_server("my_model", status="RUNNING")
    server = store.get_server("my_model")
    assert server is not None and (server["port"], server["pid"], server["status"]) == (
        10500, 123, "RUNNING")
    assert [s["model_id"] for s in store.list_servers(status="RUNNING")] == ["my_model"]
    assert store.list_servers(status="STOPPED") == []


def test_every_status_change_and_error_is_an_event(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.db")
    store.upsert_env("k", status="BUILDING")
    store.upsert_env("k", status="BUILDING", path="/p")  # no change of status: no event
    store.upsert_env("k", status="FAILED", last_error="pip said no")
    store.upsert_server("m", status="STARTING", pid=5, port=1)
    store.upsert_server("m", status="CRASHED", last_error="exit -9")
    events = store.list_events()
    assert [(e["kind"], e["subject"], e["status"]) for e in reversed(events)] == [
        ("env", "k", "BUILDING"), ("env", "k", "FAILED"),
        ("server", "m", "STARTING"), ("server", "m", "CRASHED")]
    assert events[0]["message"] == "exit -9" and events[0]["pid"] == os.getpid()
    assert events[1]["data"] == {"pid": 5, "port": 1}
    assert [e["status"] for e in store.list_events(kind="env", subject="k")] == [
        "FAILED", "BUILDING"]


def test_unknown_fields_are_rejected(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.db")
    with pytest.raises(TypeError, match="unknown envs field"):
        store.upsert_env("k", status="READY", colour="blue")


def test_wal_mode_and_schema_version(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.db")
    conn = sqlite3.connect(store.db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_migration_from_previous_version_keeps_data(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    conn = sqlite3.connect(db)
    conn.executescript(MIGRATIONS[0])
    conn.execute("INSERT INTO models VALUES ('old', 'transformers', '/m', 'k', '{\"a\": 1}', "
                 "'2025-01-01', '2025-01-01')")
    conn.execute("INSERT INTO servers (model_id, status, pid, port, updated_at) VALUES "
                 "('old', 'RUNNING', 42, 10500, '2025-01-01')")
    conn.execute("PRAGMA user_version = 1")  # a v1 database: every later migration runs
    conn.commit()
    conn.close()

    store = StateStore(db)
    assert store.schema_version == SCHEMA_VERSION
    assert store.get_model("old")["params"] == {"a": 1}
    server = store.get_server("old")
    assert server["pid"] == 42 and server["kind"] == "model"  # new column, default applied
    store.upsert_server("old", status="STOPPED", pgid=42, log_path="/l")  # new columns usable
    store.upsert_env("k", status="READY")
    store.record_env_decision("k", "dtype", {"value": "float32", "reason": "r"})  # v3 column
    assert store.env_decision("k", "dtype")["value"] == "float32"
    backup = db.with_name("state.db.bak-v1")
    assert backup.exists()
    old = sqlite3.connect(backup)
    assert old.execute("PRAGMA user_version").fetchone()[0] == 1
    assert old.execute("SELECT model_id FROM models").fetchall() == [("old",)]
    old.close()


def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    StateStore(db).upsert_model("m", "transformers", "/m")
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StateStoreError, match="newer than this OWLLM understands"):
        StateStore(db)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT model_id FROM models").fetchall() == [("m",)]
    conn.close()


def test_corrupt_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    garbage = b"this is not a database, just text " * 200
    db.write_bytes(garbage)
    with pytest.raises(StateStoreError) as info:
        StateStore(db)
    assert "cannot be read" in str(info.value) and "move it aside" in str(info.value)
    assert db.read_bytes() == garbage


def test_get_state_store_uses_owllm_home(tmp_home: Path) -> None:
    store = get_state_store()
    assert store.db_path == tmp_home / ".owllm" / "state.db"
    assert resolve_home().root == tmp_home


def _old_store(db: Path, version: int) -> sqlite3.Connection:
    """A real SQLite file at schema ``version``, as an older OWLLM left it."""
    conn = sqlite3.connect(db)
    for sql in MIGRATIONS[:version]:
        conn.executescript(sql)
    conn.execute(f"PRAGMA user_version = {version}")
    return conn


def test_v7_home_migrates_to_kind_and_name_keys(tmp_path: Path) -> None:
    """A v7 home (servers keyed by model_id, the tool server as "tools:tool-server", its
    owner row keyed the same) keeps every row; the tool server becomes (tools, tool-server)
    beside a model's own "tool-server" server."""
    db = tmp_path / "state.db"
    conn = _old_store(db, 7)
    conn.execute("INSERT INTO servers (model_id, status, kind, pid, port, url, extra, "
                 "pid_start_ticks, boot_id, updated_at) VALUES ('tools:tool-server', "
                 "'RUNNING', 'tools', 11, 8763, 'http://127.0.0.1:8763', '{\"a\": 1}', 5, "
                 "'b', 'then')")
    conn.execute("INSERT INTO servers (model_id, status, kind, pid, updated_at) VALUES "
                 "('tool-server', 'STOPPED', 'model', 12, 'then')")
    conn.execute("INSERT INTO server_owners (model_id, run_id, kind, pid, kept, since) "
                 "VALUES ('tools:tool-server', 'r1', 'pytest', 99, 1, 'then')")
    conn.execute("INSERT INTO server_owners (model_id, run_id, kind, pid, kept, since) "
                 "VALUES ('tool-server', 'r2', 'smoke', 98, 0, 'then')")
    conn.commit()
    conn.close()

    store = StateStore(db)
    assert store.schema_version == SCHEMA_VERSION
    tools = store.get_server("tool-server", kind=TOOLS_KIND)
    assert tools is not None and tools["status"] == "RUNNING" and tools["pid"] == 11
    assert tools["extra"] == {"a": 1} and tools["pid_start_ticks"] == 5
    model = store.get_server("tool-server")
    assert model is not None and model["kind"] == "model" and model["pid"] == 12
    assert store.get_server("tools:tool-server", kind=TOOLS_KIND) is None
    assert (store.get_server_owner("tool-server", kind=TOOLS_KIND) or {})["run_id"] == "r1"
    assert (store.get_server_owner("tool-server") or {})["run_id"] == "r2"
    assert db.with_name("state.db.bak-v7").exists()
    # the old keys' shape is gone: the same name in two kinds is two rows from now on
    store.upsert_server("tool-server", status="RUNNING", pid=13)
    assert store.get_server("tool-server", kind=TOOLS_KIND)["pid"] == 11  # type: ignore[index]


def test_a_model_and_the_tool_server_may_share_a_name(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.db")
    store.upsert_server("tool-server", status=ServerStatus.RUNNING, pid=1)
    store.upsert_server("tool-server", kind=TOOLS_KIND, status=ServerStatus.STARTING, pid=2)
    store.upsert_server("tool-server", kind=TOOLS_KIND, status=ServerStatus.RUNNING)
    rows = {(r["kind"], r["model_id"]): r for r in store.list_servers()}
    assert rows[("model", "tool-server")]["pid"] == 1
    assert rows[("tools", "tool-server")]["pid"] == 2
    assert [r["kind"] for r in store.list_servers(kind="tools")] == ["tools"]
    subjects = [e["subject"] for e in reversed(store.list_events(kind="server"))]
    assert subjects == ["tool-server", "tools:tool-server", "tools:tool-server"]
    owner = {"run_id": "r", "kind": "api", "pid": os.getpid()}
    store.set_server_owner("tool-server", owner, kind=TOOLS_KIND)
    assert store.get_server_owner("tool-server") is None
    assert store.release_server_owner("tool-server", "r") is False  # the model's: none
    assert store.release_server_owner("tool-server", "r", kind=TOOLS_KIND) is True
    assert store.delete_server("tool-server", kind=TOOLS_KIND)
    assert store.get_server("tool-server") is not None


def test_status_values_are_one_str_enum() -> None:
    assert ServerStatus.RUNNING == "RUNNING" and isinstance(ServerStatus.RUNNING, str)
    assert json.dumps({"status": ServerStatus.CRASHED}) == '{"status": "CRASHED"}'
    assert [s.value for s in LIVE_STATUSES] == ["STARTING", "RUNNING"]
    assert not hasattr(StateStore, "wait_for")

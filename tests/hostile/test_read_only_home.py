"""A read-only home: ``owllm state`` died with a raw ``OSError`` traceback (the store's
init lock, SQLite's WAL files and the home's folders all need writes).  Now the commands
that only read (``state``, ``server status``, ``env list``) work, and one that must write
says the home is read-only, with the fix, instead of a traceback.

The home is made read-only for real: a read-only bind mount in a private mount namespace
(``chmod`` stops nothing for root; see _isolation).  Both shapes a home is found in are
covered: closed cleanly (no ``-wal``/``-shm`` files: SQLite cannot create them there) and
left by a killed process (they exist, with transactions still in the ``-wal``).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from owllm.paths import Home
from owllm.state_store import StateStore
from tests.hostile._isolation import owllm, python, read_only, run_isolated

COMMANDS = {
    "state": ("state",),
    "status": ("server", "status"),
    "env_list": ("env", "list"),
    "stop": ("server", "stop", "ok"),  # must write: a clear refusal
}

SCENARIO = """
import json, subprocess, sys
from owllm.errors import StateStoreError
from owllm.state_store import StateStore
out = {{}}
for name, argv in {commands!r}.items():
    done = subprocess.run(argv, capture_output=True, text=True)
    out[name] = {{"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}}
try:
    StateStore({db!r}).upsert_model("m2", "transformers", "/m")
    out["write"] = "written"
except StateStoreError as exc:
    out["write"] = str(exc)
print(json.dumps(out))
"""

LEFT_BY_A_KILLED_PROCESS = """
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("INSERT INTO models VALUES ('late', 'transformers', '/m', NULL, '{}', 'x', 'x')")
os._exit(0)  # no close: -wal (holding the insert) and -shm stay
"""


def make_home(home: Path, wal_left: bool) -> Path:
    store = StateStore(Home(home).ensure().state_db)
    store.upsert_model("ok", "transformers", "/m", "torch-cpu-transformers")
    store.upsert_env("torch-cpu-transformers", status="READY", python_path="/x/bin/python")
    store.upsert_server("ok", status="RUNNING", pid=999999999, pgid=999999999,
                        pid_create_time=1.0, port=1, host="127.0.0.1",
                        url="http://127.0.0.1:1")
    if wal_left:
        subprocess.run([sys.executable, "-c", LEFT_BY_A_KILLED_PROCESS, str(store.db_path)],
                       check=True)
        assert store.db_path.with_name("state.db-wal").stat().st_size > 0
    # Reads create nothing: not even the folders a writer would need.
    shutil.rmtree(Home(home).logs_dir)
    shutil.rmtree(Home(home).locks_dir)
    return store.db_path


@pytest.mark.parametrize("wal_left", [False, True], ids=["closed", "wal-left"])
def test_read_commands_work_on_a_read_only_home(tmp_home: Path, wal_left: bool) -> None:
    db = make_home(tmp_home, wal_left)
    before = sorted(os.listdir(db.parent))
    commands = {name: owllm(tmp_home, *args) for name, args in COMMANDS.items()}
    result = run_isolated(read_only(tmp_home),
                          python(SCENARIO.format(commands=commands, db=str(db))))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])

    for name in ("state", "status", "env_list"):
        assert out[name]["rc"] == 0, f"{name}: {out[name]['stderr']}"
        assert "Traceback" not in out[name]["stderr"]
    state = json.loads(out["state"]["stdout"])
    models = sorted(m["model_id"] for m in state["models"])
    assert models == (["late", "ok"] if wal_left else ["ok"])  # the -wal's rows are read
    assert [e["env_key"] for e in state["envs"]] == ["torch-cpu-transformers"]
    status = json.loads(out["status"]["stdout"])
    assert [(s["model_id"], s["status"]) for s in status] == [("ok", "CRASHED")]
    envs = json.loads(out["env_list"]["stdout"])
    assert any(e["env_key"] == "torch-cpu-transformers" and e["status"] == "READY" for e in envs)

    # A command that must write: refused with the reason and the fix, no traceback.
    assert out["stop"]["rc"] == 2, out["stop"]
    assert "read-only" in out["stop"]["stderr"] and "Traceback" not in out["stop"]["stderr"]
    assert "read-only" in out["write"] and "OWLLM_HOME" in out["write"]

    # Outside the namespace the home was never read-only: nothing was written meanwhile.
    assert sorted(os.listdir(db.parent)) == before
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT status FROM servers").fetchall() == [("RUNNING",)]
    finally:
        conn.close()

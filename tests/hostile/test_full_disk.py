"""A full disk: the StateStore said "cannot be read … restore a state.db.bak copy" about a
healthy database (SQLite reports ``disk I/O error`` when it cannot grow its shared-memory
file), and reads failed too.  Now a full disk is named as such, with the fix; reads work;
the database is intact once space is back.  A real tmpfs, really filled (see _isolation).
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.hostile._isolation import python, run_isolated, shell, tmpfs

BEFORE = """
from owllm.state_store import StateStore
store = StateStore({db!r})
store.upsert_server("ok", status="RUNNING", pid=999999999, pgid=999999999, pid_create_time=1.0,
                    port=1, host="127.0.0.1", url="http://127.0.0.1:1")
store.upsert_env("torch-cpu-transformers", status="READY")
"""

SCENARIO = """
import json, os, subprocess, sys
from pathlib import Path
from owllm.errors import StateStoreError
from owllm.state_store import StateStore

disk, home = Path({disk!r}), Path({home!r})
store = StateStore(home / ".owllm" / "state.db")
out = {{}}

def attempt(name, action):
    try:
        out[name] = {{"ok": True, "value": action()}}
    except StateStoreError as exc:
        out[name] = {{"ok": False, "error": str(exc)}}

def owllm(*args):
    done = subprocess.run([sys.executable, "-m", "owllm", "--home", str(home), *args, "--json"],
                          capture_output=True, text=True)
    return {{"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}}

# Fill the disk to the last byte.
fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
for size in (65536, 512, 1):
    while True:
        try:
            os.write(fd, b"\\0" * size)
        except OSError:
            break
os.close(fd)
out["free"] = os.statvfs(disk).f_bavail
attempt("write", lambda: store.upsert_server("ok", last_error="x" * 100_000)["status"])
attempt("read", lambda: store.get_server("ok")["status"])
attempt("new_store", lambda: str(StateStore(disk / "other" / "state.db").db_path))
out["state"] = owllm("state")
out["status"] = owllm("server", "status")
out["stop"] = owllm("server", "stop", "ok")
os.unlink(disk / "filler")  # space is back
attempt("write_after", lambda: store.upsert_server("ok", status="STOPPED")["status"])
attempt("read_after", lambda: [r["model_id"] for r in store.list_servers()])
print(json.dumps(out))
"""


def test_a_full_disk_is_named_reads_work_and_nothing_is_lost(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    home = disk / "home"
    code = SCENARIO.format(disk=str(disk), home=str(home))
    # The home and its store are made on the small disk before it fills up.
    setup = tmpfs(disk, "1m") + shell(python(BEFORE.format(db=str(home / ".owllm" / "state.db"))))
    result = run_isolated(setup, python(code))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["free"] == 0

    # The write fails, and says the disk is full, not that the database is damaged.
    assert out["write"]["ok"] is False
    error = out["write"]["error"]
    assert "full" in error and "free" in error.lower()
    assert "cannot be read" not in error and ".bak" not in error
    # Reads, and the read-only commands, still work.
    assert out["read"] == {"ok": True, "value": "RUNNING"}
    assert out["state"]["rc"] == 0, out["state"]["stderr"]
    state = json.loads(out["state"]["stdout"])
    assert [s["model_id"] for s in state["servers"]] == ["ok"]
    assert [e["env_key"] for e in state["envs"]] == ["torch-cpu-transformers"]
    assert out["status"]["rc"] == 0, out["status"]["stderr"]
    assert json.loads(out["status"]["stdout"])[0]["status"] == "CRASHED"  # reconciled, unsaved
    # A command that must write fails cleanly: a message, no traceback.
    assert out["stop"]["rc"] == 2 and "full" in out["stop"]["stderr"]
    assert "Traceback" not in out["stop"]["stderr"]
    # A new store on the full disk: the same message.
    assert out["new_store"]["ok"] is False and "full" in out["new_store"]["error"]
    # Space back: the same database takes writes again, nothing lost.
    assert out["write_after"] == {"ok": True, "value": "STOPPED"}
    assert out["read_after"] == {"ok": True, "value": ["ok"]}


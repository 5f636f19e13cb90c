"""The CLI's context (:mod:`owllm.cli._common`): state commands need no YAML.  ``state``,
``server status|stop|logs`` and ``env list`` work from the home alone (``$OWLLM_HOME`` or
``--home``), from a directory with no config up the tree, and a broken config does not fail
them.  The server is the stub of tests/servers, started through the real manager by a
separate process, as ``owllm server start`` would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from owllm.paths import find_config
from owllm.state_store import StateStore
from tests.procs import gone
from tests.servers.conftest import make_config

REPO = Path(__file__).resolve().parents[2]

# Starts one stub server through LLMServerManager, prints its row, then stays as its parent
# only to reap it once someone else stops it (what init does for a real `server start`).
START = """
import json, os, sys
import owllm.servers.manager as manager
from tests.servers.conftest import StubBackend, ThisPython
manager.get_backend = lambda name: StubBackend()
row = manager.LLMServerManager(sys.argv[1], registry=ThisPython()).start_server(sys.argv[2])
print(json.dumps({"pid": row["pid"], "pid_create_time": row["pid_create_time"],
                  "url": row["url"]}), flush=True)
os.waitpid(row["pid"], 0)
"""


def owllm(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "owllm", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory with no configs/llm_backends.yaml anywhere up the tree."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    if find_config(folder) is not None:
        pytest.skip(f"a config exists above {folder}: {find_config(folder)}")
    return folder


@pytest.fixture
def cli_env(tmp_home: Path) -> dict[str, str]:
    """The CLI's environment: only $OWLLM_HOME says where things are (owllm importable)."""
    return {**os.environ, "OWLLM_HOME": str(tmp_home),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                        os.environ.get("PYTHONPATH")]))}


@pytest.fixture
def started(tmp_path: Path, tmp_home: Path, cli_env: dict[str, str]
            ) -> Iterator[dict[str, object]]:
    """The stub server of model ``ok2``, started by another process from its own config."""
    config = make_config(tmp_path / "project")
    starter = subprocess.Popen([sys.executable, "-c", START, str(config), "ok2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=tmp_path / "project", env=cli_env)
    try:
        line = starter.stdout.readline() if starter.stdout else ""
        if not line:
            starter.wait(timeout=30)
            pytest.fail(f"the stub server did not start: {starter.stderr.read()}")  # type: ignore[union-attr]
        yield json.loads(line)
    finally:
        # Whatever the test did, the server and its starter end here.
        from owllm.servers.manager import LLMServerManager

        LLMServerManager(config, home=str(tmp_home)).stop_all()
        starter.wait(timeout=30)
        for stream in (starter.stdout, starter.stderr):
            if stream:
                stream.close()


def test_server_status_logs_stop_from_the_home_alone(started: dict[str, object],
                                                     elsewhere: Path, tmp_home: Path,
                                                     cli_env: dict[str, str]) -> None:
    pid = started["pid"]
    status = owllm("server", "status", "--json", cwd=elsewhere, env=cli_env)
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)
    assert [(r["model_id"], r["status"], r["healthy"], r["pid"]) for r in rows] == [
        ("ok2", "RUNNING", True, pid)]

    one = owllm("server", "status", "ok2", "--json", cwd=elsewhere, env=cli_env)
    assert one.returncode == 0 and json.loads(one.stdout)[0]["url"] == started["url"]

    logs = owllm("server", "logs", "ok2", cwd=elsewhere, env=cli_env)
    assert logs.returncode == 0, logs.stderr
    assert "stub: listening on" in logs.stdout

    t0 = time.monotonic()
    stop = owllm("server", "stop", "ok2", "--json", cwd=elsewhere, env=cli_env)
    assert stop.returncode == 0, stop.stderr
    assert json.loads(stop.stdout)["status"] == "STOPPED"
    assert time.monotonic() - t0 < 30
    assert gone(int(pid), float(started["pid_create_time"]))  # type: ignore[arg-type]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{started['url']}/health", timeout=2)
    row = StateStore(tmp_home / ".owllm" / "state.db").get_server("ok2")
    assert row is not None and row["status"] == "STOPPED" and row["stopped_at"]

    again = owllm("server", "status", "--json", cwd=elsewhere, env=cli_env)
    assert again.returncode == 0
    assert [(r["model_id"], r["status"]) for r in json.loads(again.stdout)] == [
        ("ok2", "STOPPED")]


def test_state_and_env_list_from_the_home_alone(started: dict[str, object], elsewhere: Path,
                                                tmp_home: Path,
                                                cli_env: dict[str, str]) -> None:
    env = {k: v for k, v in cli_env.items() if k != "OWLLM_HOME"}
    state = owllm("--home", str(tmp_home), "state", "--json", cwd=elsewhere, env=env)
    assert state.returncode == 0, state.stderr
    data = json.loads(state.stdout)
    assert data["home"] == str(tmp_home)
    assert [(s["model_id"], s["status"]) for s in data["servers"]] == [("ok2", "RUNNING")]
    assert [m["model_id"] for m in data["models"]] == ["ok2"]

    envs = owllm("env", "list", "--json", cwd=elsewhere, env=cli_env)
    assert envs.returncode == 0, envs.stderr
    assert json.loads(envs.stdout) == []

    status = owllm("server", "status", "--home", str(tmp_home), "--json", cwd=elsewhere,
                   env=env)
    assert status.returncode == 0, status.stderr
    assert [r["model_id"] for r in json.loads(status.stdout)] == ["ok2"]


def test_a_broken_home_config_does_not_fail_state_commands(tmp_home: Path, elsewhere: Path,
                                                           cli_env: dict[str, str]) -> None:
    bad = tmp_home / "configs" / "llm_backends.yaml"
    bad.parent.mkdir()
    bad.write_text("models:\n  m:\n    base_model: x\n    model_type: chat\n")
    for args in (["state"], ["server", "status"], ["server", "stop", "m"], ["env", "list"]):
        result = owllm(*args, "--json", cwd=elsewhere, env=cli_env)
        assert result.returncode == 0, (args, result.stderr)
        assert "error" not in result.stderr, (args, result.stderr)
    # A command that needs the config finds the home's own and reports its error.
    models = owllm("models", cwd=elsewhere, env=cli_env)
    assert models.returncode == 2
    assert "llm_backends.yaml:4: models.m.model_type: 'chat' is not one of" in models.stderr


def test_the_home_config_comes_before_the_walk_up(tmp_path: Path, tmp_home: Path,
                                                  cli_env: dict[str, str]) -> None:
    (tmp_home / "configs").mkdir()
    (tmp_home / "configs" / "llm_backends.yaml").write_text(
        "models:\n  from_home: {base_model: stub}\n")
    cwd_project = tmp_path / "cwd-project"
    (cwd_project / "configs").mkdir(parents=True)
    (cwd_project / "configs" / "llm_backends.yaml").write_text(
        "models:\n  from_cwd: {base_model: stub}\n")
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text("models:\n  from_flag: {base_model: stub}\n")

    def model_ids(*args: str) -> list[str]:
        result = owllm("models", "--json", *args, cwd=cwd_project, env=cli_env)
        assert result.returncode == 0, result.stderr
        return [r["model_id"] for r in json.loads(result.stdout)]

    assert model_ids() == ["from_home"]
    assert model_ids("--config", str(explicit)) == ["from_flag"]
    without_home = {k: v for k, v in cli_env.items() if k != "OWLLM_HOME"}
    result = owllm("models", "--json", cwd=cwd_project, env=without_home)
    assert result.returncode == 0, result.stderr
    assert [r["model_id"] for r in json.loads(result.stdout)] == ["from_cwd"]


def test_logs_of_an_unknown_server_is_a_usage_error(tmp_home: Path, elsewhere: Path,
                                                    cli_env: dict[str, str]) -> None:
    result = owllm("server", "logs", "nope", cwd=elsewhere, env=cli_env)
    assert result.returncode == 2
    assert "no server recorded for model 'nope'" in result.stderr
    assert "Traceback" not in result.stderr

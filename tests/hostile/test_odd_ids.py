"""Odd ids (issue 13): an id must be a string matching its pattern everywhere.

Before: an integer model id (``123:``) passed the schema and crashed ``server start`` with a
TypeError; ``.inf:`` printed ``"model_id": Infinity`` (not JSON); ``server stop ../../x``
made a lock file outside the home; and the tool server's StateStore row key,
``tool-server``, was also a valid model id, so such a model and the tool server took each
other's row.  Now a YAML key that PyYAML reads as a number, boolean, null or date is a
config error with its line; command-line ids are checked before any path is built; the tool
server's row key is a name no model id can match (a migration renames an old home's row)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from owllm.paths import Home
from owllm.state_store import MIGRATIONS, StateStore
from owllm.tools import manage
from tests.hostile.cli import assert_clean_error, cli_env, owllm, tree
from tests.procs import gone
from tests.servers.conftest import make_manager

# YAML keys PyYAML turns into something else than a string: (key, what YAML reads).
ODD_KEYS = [("123", "an integer"), ("0x1F", "an integer"), (".inf", "a number"),
            ("-.inf", "a number"), (".nan", "a number"), ("1.5", "a number"),
            ("yes", "a boolean"), ("false", "a boolean"), ("null", "null"), ("~", "null"),
            ("2024-01-01", "a date")]


@pytest.mark.parametrize(("key", "kind"), ODD_KEYS, ids=[k for k, _ in ODD_KEYS])
def test_a_model_id_yaml_reads_as_no_string_is_a_config_error(key: str, kind: str,
                                                              tmp_path: Path) -> None:
    config = tmp_path / "llm_backends.yaml"
    config.write_text(f"models:\n  ok: {{base_model: x}}\n  {key}:\n    base_model: y\n",
                      encoding="utf-8")
    env = cli_env(tmp_path / "home", tmp_path)
    (tmp_path / "cwd").mkdir()
    commands = [["models"], ["server", "start", "ok"]]
    if key == "123":  # the first fault reported: the rest of the commands once
        commands += [["server", "start", "123"], ["model", "smoke", "--all"],
                     ["env", "resolve", "ok"]]
    for command in commands:
        run = owllm("--config", str(config), *command, cwd=tmp_path / "cwd", env=env)
        assert_clean_error(run, f"{config}:3: models.{key}: model id {key!r} is read by YAML "
                                f"as {kind}")
        error = json.loads(run.stdout)["error"]  # strict JSON: no Infinity, no NaN
        assert error["type"] == "ConfigError"
    assert not (tmp_path / "home").exists()


def test_odd_keys_and_numbers_elsewhere_are_config_errors_too(tmp_path: Path) -> None:
    """The rule is the loader's, not the models mapping's: any key, any file."""
    config = tmp_path / "llm_backends.yaml"
    config.write_text("models:\n  m:\n    base_model: x\n    startup_timeout_s: .inf\n"
                      "    generation: {temperature: .nan}\ntools:\n  - callable: a:b\n"
                      "    parameters: {properties: {1: {type: string}}}\n", encoding="utf-8")
    (tmp_path / "cwd").mkdir()
    run = owllm("--config", str(config), "models", cwd=tmp_path / "cwd",
                env=cli_env(tmp_path / "home", tmp_path))
    assert_clean_error(run, f"{config}:4: models.m.startup_timeout_s: .inf is not a finite number",
                       f"{config}:5: models.m.generation.temperature: .nan is not a finite",
                       f"{config}:8: tools[0].parameters.properties.1: key '1' is read by YAML "
                       "as an integer")
    json.loads(run.stdout)


@pytest.mark.parametrize("command", [["server", "stop"], ["server", "logs"],
                                     ["server", "status"], ["server", "start"],
                                     ["server", "restart"]], ids=" ".join)
@pytest.mark.parametrize("model_id", ["../../../../x", "/tmp/x", "-x", ".x", "x" * 65,
                                      "tools:tool-server"])
def test_a_command_line_id_is_checked_before_any_path(command: list[str], model_id: str,
                                                      tmp_path: Path) -> None:
    home = tmp_path / "a" / "b" / "home"
    (home / "configs").mkdir(parents=True)
    (home / "configs" / "llm_backends.yaml").write_text("models:\n  m: {base_model: x}\n",
                                                        encoding="utf-8")
    before = tree(tmp_path)
    run = owllm(*command, model_id, cwd=tmp_path, env=cli_env(home, tmp_path))
    if model_id == "-x":  # argparse reads it as an option: a usage error all the same
        assert run.returncode == 2 and "Traceback" not in run.stderr
    else:
        assert_clean_error(run, f"invalid model id {model_id!r}")
    assert tree(tmp_path) == before


def test_the_tool_server_row_key_is_no_model_id() -> None:
    import re

    from owllm.paths import MODEL_ID_PATTERN

    # Rows are keyed by (kind, name) (schema v8): the tool server's kind is no model's, so
    # its name may be one ("tool-server" is a valid model id) without the rows colliding.
    assert manage.KIND != "model"
    assert re.fullmatch(MODEL_ID_PATTERN.strip("^$"), manage.NAME)


def test_a_model_named_tool_server_and_the_tool_server_keep_their_own_rows(
        tmp_path: Path, tmp_home: Path, stub_backend: Any) -> None:
    """Both run at once, each with its own row; stopping the tool server leaves the model's
    server alone.  (Before, the tool server found the model's row, healthy, and reported it
    as itself instead of starting; ``tools stop`` then killed the model's server.)"""
    config = tmp_path / "configs" / "llm_backends.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("models:\n  tool-server: {base_model: stub}\n", encoding="utf-8")
    manager = make_manager(config)
    home = Home(tmp_home)
    try:
        model = manager.start_server("tool-server")
        assert manage.tool_server_status(home) is None
        tools = manage.start_tool_server(home, port=0)
        assert tools["pid"] != model["pid"] and tools["url"] != model["url"]
        assert "calculator" in {t["function"]["name"] for t in
                                httpx.get(f"{tools['url']}/tools", timeout=10).json()["tools"]}
        stopped = manage.stop_tool_server(home)
        assert stopped is not None and stopped["pid"] == tools["pid"]
        assert gone(tools["pid"], tools["pid_create_time"])
        row = manager.reconcile("tool-server")
        assert row is not None and row["status"] == "RUNNING" and row["healthy"]
        assert row["kind"] == "model" and row["pid"] == model["pid"]
    finally:
        manage.stop_tool_server(home)
        manager.stop_all()


def test_an_old_homes_tool_server_row_is_migrated(tmp_path: Path) -> None:
    """A home written before the key changed keeps working: its ``tool-server`` row of kind
    ``tools`` is renamed; a model's ``tool-server`` row (kind ``model``) stays as it is."""
    ours = next(i for i, sql in enumerate(MIGRATIONS) if manage.NAME in sql)
    db = tmp_path / "home" / ".owllm" / "state.db"
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    for sql in MIGRATIONS[:ours]:
        conn.executescript(sql)
    conn.execute(f"PRAGMA user_version = {ours}")
    conn.execute("INSERT INTO servers (model_id, status, kind, pid, url, updated_at) VALUES "
                 "('tool-server', 'STOPPED', 'tools', NULL, 'http://127.0.0.1:1', 'then')")
    conn.commit()
    conn.close()
    store = StateStore(db)
    assert store.get_server("tool-server") is None
    row = manage.tool_server_status(Home(tmp_path / "home"))
    assert row is not None and row["status"] == "STOPPED" and row["url"] == "http://127.0.0.1:1"

    other = tmp_path / "other" / "state.db"
    other.parent.mkdir()
    conn = sqlite3.connect(other)
    for sql in MIGRATIONS[:ours]:
        conn.executescript(sql)
    conn.execute(f"PRAGMA user_version = {ours}")
    conn.execute("INSERT INTO servers (model_id, status, kind, updated_at) VALUES "
                 "('tool-server', 'STOPPED', 'model', 'then')")
    conn.commit()
    conn.close()
    kept = StateStore(other).get_server("tool-server")
    assert kept is not None and kept["kind"] == "model"
    assert StateStore(other).get_server(manage.NAME, kind=manage.KIND) is None

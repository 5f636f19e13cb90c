"""Path escape: a name taken from the command line or a file must never reach a folder outside
its place in the home, and a removal must never follow a link out of it (issue 13).

Before: ``owllm env remove ../../decoy`` deleted a folder outside the home and printed
``"removed": true``; ``env remove ../configs`` deleted the home's configs; ``env gc``
followed a symlink placed in ``.envs/`` and deleted its target; ``server logs`` printed any
``*.log`` it could reach.  Now every env key and model id is checked against its pattern
before it names a path, and removal deletes only real directories under ``.envs/.store``
(or a real folder at ``.envs/<key>``), unlinking links, exactly as ``--dry-run`` lists."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from owllm.envs import EnvRegistry, layout
from owllm.paths import Home
from tests.hostile.cli import TINY_ENVS, assert_clean_error, cli_env, owllm, tree

BUILD = "0123456789ab"


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path]:
    """A home with configs, a decoy folder beside it, a cwd elsewhere."""
    home = tmp_path / "home"
    (home / "configs").mkdir(parents=True)
    (home / "configs" / "llm_backends.yaml").write_text(
        "models:\n  small: {base_model: 'demo://tiny-llama', device: cpu}\n", encoding="utf-8")
    (home / "configs" / "envs.yaml").write_text(TINY_ENVS, encoding="utf-8")
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "precious.txt").write_text("keep me", encoding="utf-8")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return {"home": home, "decoy": decoy, "cwd": cwd, "tmp": tmp_path}


def _publish_by_hand(home: Path, key: str) -> Path:
    """A published env as layout makes it (no install): .store/<key>-<id> and the link."""
    build = home / ".envs" / ".store" / f"{key}-{BUILD}"
    (build / ".venv").mkdir(parents=True)
    (build / "env.json").write_text("{}", encoding="utf-8")
    os.symlink(os.path.relpath(build, home / ".envs"), home / ".envs" / key)
    return build


@pytest.mark.parametrize("key", ["../../decoy", "../configs", "..", ".", ".store", "a/../..",
                                 "DECOY_ABSOLUTE", "tiny\n", ""])
def test_env_remove_refuses_a_key_that_is_a_path(key: str, site: dict[str, Path]) -> None:
    home, decoy = site["home"], site["decoy"]
    key = str(decoy) if key == "DECOY_ABSOLUTE" else key
    before = tree(site["tmp"])
    run = owllm("env", "remove", key, cwd=site["cwd"], env=cli_env(home, site["tmp"]))
    assert_clean_error(run, "invalid env key")
    assert tree(site["tmp"]) == before  # the decoy, the configs, the home: all untouched
    assert '"removed": true' not in run.stdout


def test_env_gc_unlinks_a_planted_link_and_keeps_its_target(site: dict[str, Path]) -> None:
    home, decoy = site["home"], site["decoy"]
    (home / ".envs").mkdir()
    os.symlink(decoy, home / ".envs" / "planted")  # a valid key, pointing out of the home
    env = cli_env(home, site["tmp"])
    dry = owllm("--json", "env", "gc", "--dry-run", cwd=site["cwd"], env=env)
    assert dry.returncode == 0, dry.stderr
    would = json.loads(dry.stdout)["would_remove"]
    assert [(i["path"], i["kind"]) for i in would] == [(str(home / ".envs" / "planted"), "link")]
    run = owllm("--json", "env", "gc", cwd=site["cwd"], env=env)
    assert run.returncode == 0, run.stderr
    assert [i["path"] for i in json.loads(run.stdout)["removed"]] == [i["path"] for i in would]
    assert (decoy / "precious.txt").read_text(encoding="utf-8") == "keep me"
    assert not os.path.lexists(home / ".envs" / "planted")


def test_env_remove_of_a_link_to_another_keys_build_keeps_that_build(
        site: dict[str, Path]) -> None:
    home = site["home"]
    (home / ".envs").mkdir()
    kept = _publish_by_hand(home, "tiny")
    os.symlink(os.path.relpath(kept, home / ".envs"), home / ".envs" / "other")
    run = owllm("--json", "env", "remove", "other", cwd=site["cwd"],
                env=cli_env(home, site["tmp"]))
    assert run.returncode == 0, run.stderr
    assert [(i["path"], i["kind"]) for i in json.loads(run.stdout)["deleted"]] == [
        (str(home / ".envs" / "other"), "link")]
    assert (kept / "env.json").is_file() and (home / ".envs" / "tiny").resolve() == kept


def test_env_gc_does_not_walk_a_store_that_is_a_link(site: dict[str, Path]) -> None:
    home, decoy = site["home"], site["decoy"]
    old_build = decoy / f"tiny-{BUILD}"  # looks like a stale build, lives outside the home
    old_build.mkdir()
    past = time.time() - 3600
    os.utime(old_build, (past, past))
    (home / ".envs").mkdir()
    os.symlink(decoy, home / ".envs" / ".store")
    os.symlink(decoy, home / ".envs" / ".tmp")
    env = cli_env(home, site["tmp"])
    before = tree(decoy)
    for args in (["env", "gc", "--dry-run"], ["env", "gc"], ["env", "remove", "tiny"]):
        run = owllm("--json", *args, cwd=site["cwd"], env=env)
        assert run.returncode == 0, run.stderr
    assert tree(decoy) == before


def test_gc_dry_run_lists_exactly_what_gc_deletes(site: dict[str, Path]) -> None:
    home = site["home"]
    (home / ".envs").mkdir()
    build = _publish_by_hand(home, "tiny")  # "small" resolves to another key: tiny is unused
    stale = home / ".envs" / ".store" / "tiny-ba9876543210"
    stale.mkdir()
    (stale / "build.json").write_text('{"pid": 999999999, "create_time": 0}',
                                      encoding="utf-8")
    (home / "not-an-env").mkdir()
    odd = home / ".envs" / "Not A Key!"  # not a key: not OWLLM's, never collected
    odd.mkdir()
    env = cli_env(home, site["tmp"])
    dry = owllm("--json", "env", "gc", "--dry-run", cwd=site["cwd"], env=env)
    assert dry.returncode == 0, dry.stderr
    listed = {i["path"] for i in json.loads(dry.stdout)["would_remove"]}
    assert listed == {str(home / ".envs" / "tiny"), str(build), str(stale)}
    before = set(tree(home))
    run = owllm("--json", "env", "gc", cwd=site["cwd"], env=env)
    assert run.returncode == 0, run.stderr
    assert {i["path"] for i in json.loads(run.stdout)["removed"]} == listed
    # (SQLite drops its -wal/-shm files on close: the state folder is not compared.)
    gone = {str(home / p) for p in before - set(tree(home)) if not p.startswith(".owllm")}
    assert {p for p in gone if not any(p.startswith(q + os.sep) for q in listed)} == listed
    assert odd.is_dir()


def test_server_commands_refuse_an_id_that_is_a_path(site: dict[str, Path]) -> None:
    """``server stop ../../../../x`` created a lock file outside the home; ``server logs``
    printed any ``*.log`` the id could reach."""
    home, tmp = site["home"], site["tmp"]
    (tmp / "secret.log").write_text("SECRET", encoding="utf-8")
    env = cli_env(home, tmp)
    before = tree(tmp)
    for args in (["server", "stop", "../../../../x"], ["server", "logs", "../../../secret"],
                 ["server", "status", "../x"], ["server", "start", "../x"],
                 ["server", "restart", "/tmp/x"], ["model", "smoke", "../../x"],
                 ["tools", "smoke", "../x"], ["env", "migrate", "../x"]):
        run = owllm(*args, cwd=site["cwd"], env=env)
        assert_clean_error(run, "invalid model id")
        assert "SECRET" not in run.stdout + run.stderr
    assert tree(tmp) == before


def test_library_calls_check_names_before_paths(tmp_path: Path) -> None:
    """The same checks guard the Python API: one function per kind of name."""
    from owllm.paths import InvalidName, check_env_key, check_model_id

    home = Home(tmp_path / "home")
    registry = EnvRegistry(home=home, progress=False)
    for bad in ("../x", "..", "/etc", "a/b", ".hidden", "x" * 101, 7):
        with pytest.raises(InvalidName):
            check_env_key(bad)
        with pytest.raises(InvalidName):
            registry.remove(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidName):
            layout.link_path(home, bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidName):
            registry.constraints_path(bad)  # type: ignore[arg-type]
    for odd in ("../x", "..", "a/b", "-x", "x" * 65, 123, None):
        with pytest.raises(InvalidName):
            check_model_id(odd)
    assert check_env_key("torch-cpu-transformers-req0a1b") and check_model_id("my_model.v2")


def test_the_schemas_carry_the_same_patterns() -> None:
    """One rule per kind of name: the JSON Schemas (editors, line numbers) and the checks
    on command-line names are the same patterns."""
    from owllm.config import config_schema
    from owllm.envs.spec import envs_schema
    from owllm.paths import ENV_KEY_PATTERN, MODEL_ID_PATTERN

    models = config_schema()["properties"]["models"]
    assert models["propertyNames"]["pattern"] == MODEL_ID_PATTERN
    assert config_schema()["$defs"]["model"]["properties"]["env_key"]["pattern"] == \
        ENV_KEY_PATTERN
    assert envs_schema()["properties"]["keys"]["propertyNames"]["pattern"] == ENV_KEY_PATTERN

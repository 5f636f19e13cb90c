"""A config error writes nothing (issue 13): every failing config run (bad YAML, a missing
file, a typo in the ``--config`` path) used to create ``.owllm/state.db``, ``logs/`` and
``locks/`` — in a folder that did not exist, too.  Now the config a command needs is loaded
and validated before anything is created in the home, and an explicit ``--config`` that
names no file is an exit-2 error for every command.  Each case snapshots the whole tmp
folder before and after a real CLI run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hostile.cli import TINY_ENVS, assert_clean_error, cli_env, owllm, tree

# Every command that reads the model config (or envs.yaml beside it).
NEEDS_CONFIG = [
    ["models"],
    ["server", "start", "m"],
    ["server", "restart", "m"],
    ["model", "smoke", "m"],
    ["model", "smoke", "--all"],
    ["tools", "smoke", "m"],
    ["tools", "serve", "--port", "0"],
    ["env", "resolve", "m"],
    ["env", "test", "tiny"],
    ["env", "create", "tiny"],
    ["env", "gc"],
    ["env", "migrate"],
]
BROKEN = "models:\n  m:\n    base_model: x\n    model_type: chat\n"  # line 4 is wrong


def _case(fault: str, tmp: Path) -> tuple[list[str], Path | None, str]:
    """(global options, $OWLLM_HOME, a fragment of the expected message) for one fault."""
    if fault == "broken-home-config":  # the home exists, its own config is broken
        home = tmp / "home"
        (home / "configs").mkdir(parents=True)
        (home / "configs" / "llm_backends.yaml").write_text(BROKEN, encoding="utf-8")
        return [], home, "llm_backends.yaml:4: models.m.model_type"
    if fault == "broken-config-new-home":  # $OWLLM_HOME names a folder not there yet
        bad = tmp / "bad.yaml"
        bad.write_text(BROKEN, encoding="utf-8")
        return ["--config", str(bad)], tmp / "new-home", f"{bad}:4: models.m.model_type"
    if fault == "broken-envs-yaml":
        home = tmp / "home"
        (home / "configs").mkdir(parents=True)
        (home / "configs" / "llm_backends.yaml").write_text(
            "models:\n  m: {base_model: x, device: cpu}\n", encoding="utf-8")
        (home / "configs" / "envs.yaml").write_text(TINY_ENVS + "  tiny: {}\n",
                                                    encoding="utf-8")
        return [], home, "envs.yaml:"
    if fault == "missing-config":
        return ["--config", str(tmp / "missing.yaml")], tmp / "home", "file not found"
    # A typo in the folder: the home would derive from it (no $OWLLM_HOME).
    assert fault == "typo-folder"
    return ["--config", str(tmp / "projetc" / "configs" / "llm_backends.yaml")], None, \
        "file not found"


FAULTS = ["broken-home-config", "broken-config-new-home", "broken-envs-yaml",
          "missing-config", "typo-folder"]


@pytest.mark.parametrize("fault", FAULTS)
def test_a_failing_config_run_creates_nothing(fault: str, tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    options, home, fragment = _case(fault, tmp_path)
    env = cli_env(home, tmp_path)
    before = tree(tmp_path)
    for command in NEEDS_CONFIG:
        if fault == "broken-envs-yaml" and command in (["models"], ["server", "start", "m"],
                                                       ["server", "restart", "m"],
                                                       ["model", "smoke", "m"],
                                                       ["model", "smoke", "--all"],
                                                       ["tools", "smoke", "m"],
                                                       ["tools", "serve", "--port", "0"]):
            continue  # these read envs.yaml only once a server starts (after the config)
        run = owllm(*options, *command, cwd=cwd, env=env, timeout=60)
        assert_clean_error(run, fragment)
        assert tree(tmp_path) == before, (command, sorted(set(tree(tmp_path)) - set(before)))


@pytest.mark.parametrize("command", [["state"], ["server", "status"], ["server", "stop", "m"],
                                     ["server", "logs", "m"], ["env", "list"],
                                     ["env", "remove", "tiny"], ["tools", "status"],
                                     ["tools", "stop"]], ids=" ".join)
def test_a_config_path_that_is_not_there_fails_every_command(command: list[str],
                                                             tmp_path: Path) -> None:
    """State commands do not need the config, but an explicit --config decides the home:
    one that names no file is a typo, reported before a home is made from its folder."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = cli_env(None, tmp_path)
    before = tree(tmp_path)
    run = owllm("--config", str(tmp_path / "projetc" / "configs" / "llm_backends.yaml"),
                *command, cwd=cwd, env=env, timeout=60)
    assert_clean_error(run, "file not found")
    assert tree(tmp_path) == before

"""Config is not code until it is served (issue 13): validating a tools file with
``callable: evilmod:f`` imported — ran — ``evilmod``, with the file's folder first on
``sys.path``.  ``callable:`` entries and ``python_path`` are trusted code (README, Tool
calling), but only the tool server, serving them, imports them: ``owllm tools validate``,
config loading and ``owllm models`` read specs from the file alone."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.hostile.cli import assert_clean_error, cli_env, owllm

EVIL = "from pathlib import Path\nPath({marker!r}).write_text('ran')\n" \
       "def f(x):\n    return x\n"
PARAMS = "{type: object, properties: {x: {type: string}}, required: [x]}"
CALL = '{"tool": "f", "args": {"x": "hi"}, "id": "1"}'


@pytest.fixture
def project(tmp_path: Path) -> dict[str, Path]:
    """evilmod.py beside the tools file and in the home (where a config's entries resolve);
    importing it writes the marker."""
    home = tmp_path / "home"
    (home / "configs").mkdir(parents=True)
    marker = tmp_path / "IMPORTED"
    for folder in (home, home / "configs"):
        (folder / "evilmod.py").write_text(EVIL.format(marker=str(marker)), encoding="utf-8")
    tools = home / "configs" / "tools.yaml"
    tools.write_text(f"python_path: [.]\ntools:\n  - callable: evilmod:f\n"
                     f"    parameters: {PARAMS}\n", encoding="utf-8")
    config = home / "configs" / "llm_backends.yaml"
    config.write_text(f"models:\n  m: {{base_model: x}}\ntools:\n  - callable: evilmod:f\n"
                      f"    parameters: {PARAMS}\n", encoding="utf-8")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return {"home": home, "tools": tools, "config": config, "marker": marker, "cwd": cwd,
            "tmp": tmp_path}


@pytest.mark.parametrize("what", ["tools-file", "owllm-config"])
def test_validating_tools_runs_no_code(what: str, project: dict[str, Path]) -> None:
    file = project["tools"] if what == "tools-file" else project["config"]
    env = cli_env(project["home"], project["tmp"])
    good = owllm("tools", "validate", "--tools", str(file), stdin=CALL, cwd=project["cwd"],
                 env=env)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["calls"][0]["tool"] == "f"  # the spec came from the file
    bad = owllm("tools", "validate", "--tools", str(file), stdin=CALL.replace('"hi"', "1"),
                cwd=project["cwd"], env=env)
    assert bad.returncode == 1 and json.loads(bad.stdout)["error"]["code"] == "type_error"
    assert not project["marker"].exists()


def test_loading_the_config_runs_no_code(project: dict[str, Path]) -> None:
    env = cli_env(project["home"], project["tmp"])
    for command in (["models"], ["env", "resolve", "m"], ["state"]):
        run = owllm("--config", str(project["config"]), *command, cwd=project["cwd"], env=env)
        assert run.returncode == 0, (command, run.stderr)
    assert not project["marker"].exists()


def test_validation_needs_the_parameters_in_the_file(project: dict[str, Path]) -> None:
    """A callable without ``parameters`` (a ``Tool`` object carries its own) cannot be
    validated without importing it: a clear usage error, and still nothing runs."""
    project["tools"].write_text("python_path: [.]\ntools:\n  - callable: evilmod:f\n",
                                encoding="utf-8")
    run = owllm("tools", "validate", "--tools", str(project["tools"]), stdin=CALL,
                cwd=project["cwd"], env=cli_env(project["home"], project["tmp"]))
    assert_clean_error(run, "tools[0].parameters: required to validate without importing "
                            "'evilmod:f'")
    assert not project["marker"].exists()


def test_only_serving_imports(project: dict[str, Path], monkeypatch: pytest.MonkeyPatch
                              ) -> None:
    """The library's two readings: specs (no import, ``sys.path`` untouched) and tools (the
    import the tool server does, which runs the code: trusted, like a conftest)."""
    from owllm.config import load_config
    from owllm.tools.registry import load_tools_config, load_tools_specs, specs_from_config

    monkeypatch.setattr(sys, "path", list(sys.path))
    path_before = list(sys.path)
    (spec,) = load_tools_specs(project["tools"])
    (from_config,) = specs_from_config(load_config(project["config"]))
    assert spec == from_config and spec["function"]["name"] == "f"
    assert sys.path == path_before and "evilmod" not in sys.modules
    assert not project["marker"].exists()
    monkeypatch.delitem(sys.modules, "evilmod", raising=False)
    try:
        (served,) = load_tools_config(project["tools"])
        assert served(x="y") == "y" and project["marker"].exists()
    finally:
        sys.modules.pop("evilmod", None)


def test_the_readme_says_callables_are_trusted_code() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = " ".join(readme.split("## Tool calling", 1)[1].split("\n## ", 1)[0].split())
    assert "`callable:` entries and `python_path` are trusted code, like a conftest" in section

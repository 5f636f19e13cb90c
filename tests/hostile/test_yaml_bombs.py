"""YAML bombs: a file small enough to mail that, read naively, takes unbounded time or memory
(issue 13).  A 587-byte billion-laughs config made ``owllm --config F models`` run 25 s and
reach 3.1 GB before a MemoryError traceback (the line-number walker visited every alias
expansion); a self-referencing alias and 5000-deep nesting ended in RecursionError
tracebacks.  Every YAML OWLLM reads goes through one bounded loader (``owllm._yaml_lines``),
so each fault is tried on each kind of file, through the real CLI, under a memory cap and a
clock: exit 2 within seconds, the file and line named, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from owllm import _yaml_lines as yaml_lines
from tests.hostile.cli import assert_clean_error, cli_env, owllm

MEMORY = 1 << 30  # the CLI needs ~60 MB; the unbounded walker went past 3 GB
SECONDS = 8.0  # a bounded run takes well under a second on a loaded 2-core machine


def laughs(use: str) -> str:
    """Ten levels of ten aliases each (10**9 strings when expanded), ``use`` placing *a9."""
    lines = ['a0: &a0 ["lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\n" + use


# Each bomb: (content, the line the error names, a fragment of the message).
BOMBS = {
    "billion-laughs": (laughs("models:\n  m:\n    base_model: x\n    requirements: *a9\n"),
                       6, "past 100000 values"),
    # The same in a place the schema accepts as is: every later reader walks it.
    "laughs-in-tool-parameters": (
        laughs("models: {}\ntools:\n  - callable: m:f\n    parameters: {p: *a9}\n"),
        6, "past 100000 values"),
    # One long string, aliased over and over: few values, half a gigabyte of text.
    "quadratic-text": ("models:\n  m:\n    base_model: x\n    system_prompt: &s "
                       + "x" * 500_000 + "\n    requirements: ["
                       + ", ".join(["*s"] * 1000) + "]\n", 5, "characters of text"),
    # Merge keys copy their anchor's pairs: ten merges per level grow like the laughs.
    "merge-keys": ("b0: &b0 {k: v}\n" + "".join(
        f"b{i}: &b{i} {{<<: [{', '.join([f'*b{i - 1}'] * 10)}]}}\n" for i in range(1, 10))
        + "models:\n  m: {base_model: x}\n", 6, "past 100000 values"),
    "recursive-alias": ("models:\n  m:\n    base_model: x\n    requirements: &r [*r]\n",
                        4, "inside its own anchor &r"),
    "recursive-mapping": ("models: &m\n  m:\n    base_model: x\n    more: *m\n",
                          4, "inside its own anchor &m"),
    "deep-nesting": ("models:\n  m:\n    base_model: x\n    requirements: "
                     + "[" * 5000 + "]" * 5000 + "\n", 4, "nested deeper than 64 levels"),
    "deep-block-nesting": ("models:\n  m:\n    base_model: x\n    generation:\n"
                           + "".join("  " * (i + 3) + f"k{i}:\n" for i in range(200)),
                           65, "nested deeper than 64 levels"),
}


def _project(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A project folder (configs/ inside), a cwd elsewhere and a CLI env with a tmp home."""
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return project, cwd, cli_env(tmp_path / "home", tmp_path)


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_model_config_bomb_is_refused_in_bounded_time(bomb: str, tmp_path: Path) -> None:
    content, line, fragment = BOMBS[bomb]
    project, cwd, env = _project(tmp_path)
    config = project / "configs" / "llm_backends.yaml"
    config.write_text(content, encoding="utf-8")
    run = owllm("--config", str(config), "models", cwd=cwd, env=env, memory=MEMORY)
    assert run.seconds < SECONDS, run.seconds
    assert_clean_error(run, f"{config}:{line}: ", fragment)
    assert json.loads(run.stdout)["error"]["type"] == "ConfigError"


@pytest.mark.parametrize("bomb", ["billion-laughs", "recursive-alias", "deep-nesting"])
def test_envs_yaml_bomb_is_refused_in_bounded_time(bomb: str, tmp_path: Path) -> None:
    """envs.yaml next to the model config goes through the same loader."""
    content, line, fragment = BOMBS[bomb]
    project, cwd, env = _project(tmp_path)
    config = project / "configs" / "llm_backends.yaml"
    config.write_text("models:\n  m: {base_model: x, device: cpu}\n", encoding="utf-8")
    envs = project / "configs" / "envs.yaml"
    envs.write_text(content.replace("models:", "keys:", 1), encoding="utf-8")
    run = owllm("--config", str(config), "env", "resolve", "m", cwd=cwd, env=env,
                memory=MEMORY)
    assert run.seconds < SECONDS, run.seconds
    assert_clean_error(run, f"{envs}:{line}: ", fragment)


@pytest.mark.parametrize("bomb", ["billion-laughs", "laughs-in-tool-parameters",
                                  "recursive-alias", "deep-nesting"])
def test_tools_file_bomb_is_refused_in_bounded_time(bomb: str, tmp_path: Path) -> None:
    """``owllm tools validate --tools FILE`` reads tools files with the same loader."""
    content, line, fragment = BOMBS[bomb]
    _, cwd, env = _project(tmp_path)
    tools = tmp_path / "tools.yaml"
    tools.write_text(content, encoding="utf-8")
    run = owllm("tools", "validate", "--tools", str(tools), cwd=cwd, env=env,
                stdin='{"tool": "f", "args": {}, "id": "1"}', memory=MEMORY)
    assert run.seconds < SECONDS, run.seconds
    assert_clean_error(run, f"{tools}:{line}: ", fragment)


def test_oversized_and_endless_files_are_refused(tmp_path: Path) -> None:
    """The size cap holds whatever the file is: a 2 MiB file, /dev/zero (stat says 0 bytes,
    reading never ends), a folder."""
    _, cwd, env = _project(tmp_path)
    big = tmp_path / "big.yaml"
    big.write_text("models: {}\n" + "# padding\n" * 210_000, encoding="utf-8")
    for path, fragment in ((big, f"larger than {yaml_lines.MAX_FILE_BYTES} bytes"),
                           (Path("/dev/zero"), "not a regular file"),
                           (tmp_path, "not a regular file")):
        run = owllm("--config", str(path), "models", cwd=cwd, env=env, memory=MEMORY)
        assert run.seconds < SECONDS, (path, run.seconds)
        assert_clean_error(run, fragment)


def test_files_within_the_limits_load(tmp_path: Path) -> None:
    """The limits leave room for real files: an anchor reused through merge keys by 3000
    models, a tool schema nested 61 levels deep (validated as a JSON Schema too)."""
    project, cwd, env = _project(tmp_path)
    config = project / "configs" / "llm_backends.yaml"
    nested = "{type: object}"
    for _ in range(28):
        nested = f"{{type: object, properties: {{x: {nested}}}}}"
    models = "".join(f"  m{i}: {{<<: *base, system_prompt: p{i}}}\n" for i in range(3000))
    config.write_text(f"models:\n  m: &base {{base_model: x, device: cpu}}\n{models}"
                      f"tools:\n  - callable: mod:f\n    parameters: {nested}\n",
                      encoding="utf-8")
    run = owllm("--config", str(config), "--json", "models", cwd=cwd, env=env, memory=MEMORY)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads(run.stdout)
    assert len(rows) == 3001 and rows[-1]["model_id"] == "m2999"  # config order
    run = owllm("tools", "validate", "--tools", str(config), cwd=cwd, env=env,
                stdin='{"tool": "f", "args": {"x": {}}, "id": "1"}', memory=MEMORY)
    assert run.returncode == 0, run.stderr[-2000:]


def test_limits_are_documented() -> None:
    """The README states the numbers the loader enforces."""
    readme = " ".join((Path(__file__).resolve().parents[2] / "README.md")
                      .read_text(encoding="utf-8").split())
    assert yaml_lines.MAX_FILE_BYTES == 1 << 20 and "at most 1 MiB" in readme
    assert yaml_lines.MAX_DEPTH == 64 and "64 levels" in readme
    assert yaml_lines.MAX_VALUES == 100_000 and "100 000 values" in readme
    assert yaml_lines.MAX_TEXT_CHARS == 4 << 20 and "4 Mi characters" in readme

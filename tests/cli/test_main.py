"""The CLI frame: global options, JSON on stdout, exit codes, errors naming what is wrong."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def owllm(*args: str, cwd: Path, env_home: Path | None = None
          ) -> subprocess.CompletedProcess[str]:
    """Run the CLI in ``cwd`` (a tmp folder: nothing may land in the working tree)."""
    import os

    env = dict(os.environ)
    if env_home is not None:
        env["OWLLM_HOME"] = str(env_home)
    return subprocess.run([sys.executable, "-m", "owllm", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)


def test_bad_config_is_exit_2_with_the_line(tmp_path: Path, tmp_home: Path) -> None:
    bad = tmp_path / "configs" / "llm_backends.yaml"
    bad.parent.mkdir()
    bad.write_text("models:\n  m:\n    base_model: x\n    model_type: chat\n")
    result = owllm("models", cwd=tmp_path)
    assert result.returncode == 2
    assert "configs/llm_backends.yaml:4: models.m.model_type: 'chat' is not one of" \
        in result.stderr
    assert json.loads(result.stdout)["error"]["type"] == "ConfigError"


def test_unknown_model_is_exit_2_listing_known_ids(tmp_path: Path, tmp_home: Path) -> None:
    result = owllm("model", "smoke", "nope", "--config",
                   str(REPO / "configs" / "llm_backends.yaml"), cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown model id 'nope'" in result.stderr and "known model ids: demo" in result.stderr


@pytest.mark.parametrize("args", [["frobnicate"], ["env"], ["server", "start"]])
def test_usage_errors_exit_2(args: list[str], tmp_path: Path, tmp_home: Path) -> None:
    result = owllm(*args, cwd=tmp_path)
    assert result.returncode == 2 and "usage:" in result.stderr


def test_no_config_found_is_a_usage_error(tmp_path: Path, tmp_home: Path) -> None:
    result = owllm("models", cwd=tmp_path)
    assert result.returncode == 2 and "pass --config PATH" in result.stderr

"""``owllm models`` and ``owllm state`` (:mod:`owllm.cli.state`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


def test_models_lists_the_config(tmp_path: Path, tmp_home: Path) -> None:
    result = owllm("--config", str(REPO / "configs" / "llm_backends.yaml"), "models",
                   cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["model_id"] for r in rows] == ["demo", "demo-vllm", "demo-llamacpp"]
    assert rows[0]["configured"] is True and rows[0]["registered"] is False


def test_state_shows_the_store_of_the_home(tmp_path: Path, tmp_home: Path) -> None:
    from owllm.state_store import get_state_store

    get_state_store().upsert_model("m", "transformers", "/m", "k", {})
    result = owllm("state", "--json", "--config", str(REPO / "configs" / "llm_backends.yaml"),
                   cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["home"] == str(tmp_home) and data["schema_version"] >= 2
    assert [m["model_id"] for m in data["models"]] == ["m"]
    assert data["events"][0]["status"] == "REGISTERED"

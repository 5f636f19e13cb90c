"""``owllm env …`` end to end through ``owllm.cli.main`` (exit codes 0/1/2, JSON on stdout)."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from owllm.cli import main

CONFIG = textwrap.dedent("""\
    version: 1
    models:
      small:
        base_model: "demo://tiny-llama"
        backend: transformers
        device: cpu
      quant:
        base_model: "demo://tiny-llama"
        use_4bit: true
    """)


@pytest.fixture
def project(tmp_home: Path, tiny_envs: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    configs = tmp_home / "configs"
    configs.mkdir()
    (configs / "llm_backends.yaml").write_text(CONFIG)
    shutil.copy(tiny_envs, configs / "envs.yaml")  # envs.yaml beside the model config wins
    monkeypatch.setenv("OWLLM_HARDWARE", "{}")
    monkeypatch.chdir(tmp_home)
    return tmp_home


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, object]:
    code = main(["--json", *argv])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def test_env_test_builds_then_passes(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, data = run(capsys, "env", "test", "tiny")
    assert code == 0, data
    assert isinstance(data, dict)
    assert data["env_key"] == "tiny" and data["status"] == "PASS" and data["errors"] == []
    assert set(data) >= {"python_path", "torch_version", "cuda_available"}
    assert data["python_path"].startswith(str(project / ".envs"))


def test_env_test_fail_and_unknown_key(project: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "env", "create", "tiny")[0] == 0
    site = next((project / ".envs" / "tiny" / ".venv" / "lib").glob("python*/site-packages"))
    (site / "six.py").unlink()
    code, data = run(capsys, "env", "test", "tiny")
    assert code == 1 and isinstance(data, dict) and data["status"] == "FAIL"
    code, data = run(capsys, "env", "test", "no-such-key")
    assert code == 2 and isinstance(data, dict)
    assert "tiny" in data["error"]["hint"]
    code, rows = run(capsys, "env", "list")
    assert code == 0 and isinstance(rows, list)
    assert [r["status"] for r in rows if r["env_key"] == "tiny"] == ["FAILED"]


def test_resolve_list_gc_migrate(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, data = run(capsys, "env", "resolve", "quant")
    assert code == 0 and isinstance(data, dict)
    assert data["env_key"] == "torch-cpu-transformers-bnb" and data["rules"]
    assert run(capsys, "env", "resolve", "nope")[0] == 2

    legacy = project / "environments" / "small"
    (legacy / "bin").mkdir(parents=True)
    (project / "environments" / "ghost").mkdir()
    code, rows = run(capsys, "env", "list")
    assert isinstance(rows, list)
    assert {r["model_id"] for r in rows if r["status"] == "LEGACY"} == {"small", "ghost"}

    assert run(capsys, "env", "create", "tiny")[0] == 0
    stale = project / ".envs" / ".store" / "tiny-0123456789ab"
    stale.mkdir()
    (stale / "build.json").write_text('{"pid": 999999999, "create_time": 0}')
    code, data = run(capsys, "env", "gc", "--dry-run")
    assert code == 0 and isinstance(data, dict)
    paths = {item["path"] for item in data["would_remove"]}
    assert str(stale) in paths and str(project / ".envs" / "tiny") in paths  # no model uses it
    assert stale.exists()
    code, data = run(capsys, "env", "gc")
    assert code == 0 and not stale.exists() and not (project / ".envs" / "tiny").exists()

    # "small" resolves to torch-cpu-transformers, which the tiny envs.yaml installs as [six].
    code, results = run(capsys, "env", "migrate", "small")
    assert code == 0 and isinstance(results, list)
    assert results[0]["removed"] and results[0]["verified_by"] == "env_probe"
    assert not legacy.exists()
    code, results = run(capsys, "env", "migrate")
    assert code == 1 and isinstance(results, list)
    assert results[0]["model_id"] == "ghost" and not results[0]["removed"]
    assert (project / "environments" / "ghost").exists()
    assert run(capsys, "env", "remove", "torch-cpu-transformers")[0] == 0

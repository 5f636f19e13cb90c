from __future__ import annotations

from pathlib import Path

import pytest

from owllm.paths import find_config, resolve_home


def test_home_layout_follows_the_guide(tmp_path: Path) -> None:
    home = resolve_home(tmp_path)
    assert home.envs_dir == tmp_path / ".envs"
    assert home.envs_tmp_dir == tmp_path / ".envs" / ".tmp"
    assert home.constraints_dir == tmp_path / "constraints"
    assert home.legacy_envs_dir == tmp_path / "environments"
    assert home.state_db == tmp_path / ".owllm" / "state.db"
    assert home.logs_dir == tmp_path / ".owllm" / "logs"


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    (project / "configs" / "llm_backends.yaml").write_text("models: {}\n")
    deep = project / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.delenv("OWLLM_HOME", raising=False)
    monkeypatch.chdir(deep)
    assert find_config() == (project / "configs" / "llm_backends.yaml").resolve()
    assert resolve_home().root == project.resolve()  # nearest config from cwd up
    other = tmp_path / "other" / "configs" / "x.yaml"
    assert resolve_home(config_path=other).root == (tmp_path / "other").resolve()
    monkeypatch.setenv("OWLLM_HOME", str(tmp_path / "env-home"))
    assert resolve_home(config_path=other).root == (tmp_path / "env-home").resolve()
    assert resolve_home(tmp_path / "explicit").root == (tmp_path / "explicit").resolve()


def test_fallback_is_user_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OWLLM_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    assert resolve_home().root == tmp_path / "xdg" / "owllm"

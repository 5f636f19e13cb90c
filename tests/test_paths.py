from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from owllm.paths import Home, find_config, resolve_config_path, resolve_home


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


def test_home_is_path_like_never_its_repr(tmp_path: Path) -> None:
    """A Home handed on where a path is expected means its root folder: once, a test passed
    ``str(registry.home)`` to a subprocess and the repo got a folder named
    ``Home(root=PosixPath('...``."""
    home = Home(tmp_path / "h")
    assert os.fspath(home) == str(home) == f"{home}" == str(tmp_path / "h")
    assert Path(home) == home.root and Path(home, "x") == tmp_path / "h" / "x"
    assert home / ".owllm" == tmp_path / "h" / ".owllm"
    assert isinstance(home, os.PathLike)
    assert "Home(" not in str(home) and "PosixPath" not in f"{home}"
    assert Home(home) == home and Home(str(tmp_path / "h")) == home  # type: ignore[arg-type]
    assert resolve_home(home) is home
    assert resolve_home(str(home)) == resolve_home(tmp_path / "h")


def test_a_home_passed_to_a_subprocess_writes_into_the_home(tmp_path: Path) -> None:
    """The shape of the original mistake: a Home in argv / str(Home) given to another process
    that opens files relative to its working directory."""
    home = Home(tmp_path / "h")
    home.ensure()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    script = ("import sys, pathlib; "
              "pathlib.Path(sys.argv[1], 'marker').write_text('x'); "
              "pathlib.Path(sys.argv[2], 'marker2').write_text('x')")
    subprocess.run([sys.executable, "-c", script, home, str(home)], cwd=cwd, check=True,
                   timeout=60)
    assert (home.root / "marker").is_file() and (home.root / "marker2").is_file()
    assert list(cwd.iterdir()) == []


def test_home_config_is_the_default_config(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    home = resolve_home(tmp_path / "home")
    walked = tmp_path / "project" / "configs" / "llm_backends.yaml"
    walked.parent.mkdir(parents=True)
    walked.write_text("models: {}\n")
    monkeypatch.chdir(walked.parent)
    assert resolve_config_path(None, home) == walked.resolve()  # the home has none yet
    own = home.root / "configs" / "llm_backends.yaml"
    own.parent.mkdir(parents=True)
    own.write_text("models: {}\n")
    assert resolve_config_path(None, home) == own
    assert resolve_config_path(tmp_path / "x.yaml", home) == tmp_path / "x.yaml"
    assert resolve_config_path() == walked.resolve()  # no home: the walk-up

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from owllm.envs.pipconf import PipSettings, read_pip_settings, torch_index_args, uv_source_args


def test_matches_pip_config_list_on_this_machine() -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip("pip config unavailable")
    ours = read_pip_settings()
    values: dict[str, str] = {}
    lines = done.stdout.splitlines()
    for line in sorted(lines, key=lambda ln: ln.startswith(":env:")):  # env vars win
        name, _, value = line.partition("=")
        values[name.split(".", 1)[1]] = value.strip("'\"")
    if "find-links" in values:
        assert ours.find_links == tuple(values["find-links"].split())
    if "extra-index-url" in values:
        assert ours.extra_index_urls == tuple(values["extra-index-url"].split())
    if "constraint" in values:
        assert ours.constraints == tuple(values["constraint"].split())


def test_files_sections_and_env_vars(tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://mirror/simple\nfind-links = /a /b\n"
                    "[install]\nconstraint = /c.txt\nno-index = false\n")
    env = {"HOME": str(tmp_path), "XDG_CONFIG_DIRS": str(tmp_path / "none"),
           "PIP_CONFIG_FILE": str(conf), "PIP_EXTRA_INDEX_URL": "file:///x file:///y"}
    pip = read_pip_settings(env)
    assert pip.index_url == "https://mirror/simple" and pip.find_links == ("/a", "/b")
    assert pip.constraints == ("/c.txt",) and pip.extra_index_urls == ("file:///x", "file:///y")
    assert not pip.no_index
    args = uv_source_args(pip)
    assert args[args.index("--index-url") + 1] == "https://mirror/simple"
    assert args.count("--extra-index-url") == 2 and args.count("--find-links") == 2
    assert args[args.index("--index-strategy") + 1] == "unsafe-best-match"
    assert "--constraint" in args
    assert read_pip_settings({**env, "PIP_CONFIG_FILE": "/dev/null",
                              "PIP_EXTRA_INDEX_URL": ""}).index_url is None


def test_torch_index_never_required_when_pip_names_sources() -> None:
    url = "https://download.pytorch.org/whl/cpu"
    mine = PipSettings(find_links=("/opt/wheels",))
    assert torch_index_args(url, "auto", mine, {})[0] == []
    assert torch_index_args(url, "auto", PipSettings(), {})[0] == ["--extra-index-url", url]
    assert torch_index_args(url, "always", mine, {})[0] == ["--extra-index-url", url]
    assert torch_index_args(url, "auto", PipSettings(), {"OWLLM_TORCH_INDEX": "never"})[0] == []
    assert torch_index_args(None, "always", PipSettings(), {})[0] == []

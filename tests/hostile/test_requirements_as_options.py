"""Requirements that are options (issue 13): ``requirements: ["--index-url=http://…"]`` was
handed to uv as an option, and uv fetched packages from that index.  Now a requirement that
starts with ``-`` (or spans lines) is a config error with its line, in llm_backends.yaml and
envs.yaml alike, ``BuildSpec`` refuses one wherever package lists are assembled, and the
installers pass requirements after ``--`` so none could ever be read as an option."""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from owllm.envs.installer import InstallPlan, PipInstaller, UvInstaller
from owllm.envs.pipconf import PipSettings
from owllm.envs.spec import BuildSpec
from owllm.errors import ConfigError
from tests.hostile.cli import TINY_ENVS, assert_clean_error, cli_env, owllm


@pytest.fixture
def index() -> Iterator[list[str]]:
    """A package index on loopback that records every request made to it."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hits.append(f"http://127.0.0.1:{server.server_address[1]}/simple")  # hits[0]: the URL
    try:
        yield hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _project(tmp_path: Path, models: str, envs: str = TINY_ENVS) -> tuple[Path, Path]:
    home = tmp_path / "home"
    (home / "configs").mkdir(parents=True)
    (home / "configs" / "llm_backends.yaml").write_text(models, encoding="utf-8")
    (home / "configs" / "envs.yaml").write_text(envs, encoding="utf-8")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return home, cwd


@pytest.mark.parametrize("requirement", ["--index-url={url}", "-i{url}", "--extra-index-url",
                                         " --index-url={url}", "six\\n--index-url={url}"])
def test_a_model_requirement_that_is_an_option_is_a_config_error(
        requirement: str, index: list[str], tmp_path: Path) -> None:
    """``owllm env test KEY`` builds the env: before, uv met the option and asked the index
    for six; now the config fails at its line and no installer runs."""
    url = index[0]
    value = '"' + requirement.format(url=url) + '"'  # "\\n" stays a YAML escape: a newline
    home, cwd = _project(tmp_path, "models:\n  m:\n    base_model: 'demo://tiny-llama'\n"
                                   "    device: cpu\n    env_key: evil\n"
                                   f"    requirements: [{value}]\n")
    run = owllm("env", "test", "evil", cwd=cwd, env=cli_env(home, tmp_path), timeout=300)
    assert_clean_error(run, "llm_backends.yaml:6: models.m.requirements[0]: requirement ",
                       "is not a package spec")
    assert index[1:] == []  # nobody asked the index for anything
    assert not (home / ".envs").exists() and not (home / ".owllm").exists()


def test_an_envs_yaml_package_that_is_an_option_is_a_config_error(index: list[str],
                                                                  tmp_path: Path) -> None:
    envs = TINY_ENVS.replace("    packages: [six]\n    probe_imports: [six]\n",
                             f"    packages: ['--index-url={index[0]}', six]\n"
                             "    probe_imports: [six]\n", 1)
    home, cwd = _project(tmp_path, "models:\n  m: {base_model: 'demo://tiny-llama'}\n", envs)
    run = owllm("env", "create", "tiny", cwd=cwd, env=cli_env(home, tmp_path), timeout=300)
    assert_clean_error(run, "envs.yaml:6: backends.transformers.packages[0]: ")
    assert index[1:] == []


def test_a_spec_refuses_an_option_wherever_it_is_assembled() -> None:
    for field in ("packages", "exclude", "no_deps", "keep_built_wheels"):
        with pytest.raises(ConfigError, match="not a package spec"):
            fields: dict[str, Any] = {"packages": ("six",), field: ("--index-url=http://x",)}
            BuildSpec(key="k", **fields)
    with pytest.raises(ConfigError, match="not a package spec"):
        BuildSpec(key="k", packages=("six\n-r /etc/passwd",))
    from owllm.envs.spec import load_envs_config

    envs = load_envs_config(Path(__file__).resolve().parents[2] / "configs" / "envs.yaml")
    with pytest.raises(ConfigError, match="not a package spec"):
        envs.build_spec("k", "transformers", "cpu", (), requirements=("--index-url=http://x",))


def _recorder(path: Path, log: Path) -> None:
    """An executable that appends its argv (JSON) to ``log`` and succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n",
                    encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_installers_pass_requirements_after_double_dash(installer: str, tmp_path: Path) -> None:
    """Whatever a spec holds, the installer's argv ends its options before the packages."""
    log = tmp_path / "argv.jsonl"
    venv = tmp_path / "env" / ".venv"
    venv.mkdir(parents=True)
    spec = BuildSpec(key="k", packages=("six", "tabulate==0.9.0"), no_deps=("tabulate",))
    plan = InstallPlan(spec=spec, pip=PipSettings())
    if installer == "uv":
        _recorder(tmp_path / "bin" / "uv", log)
        UvInstaller(str(tmp_path / "bin" / "uv")).install(venv, plan, tmp_path / "i.log")
    else:
        _recorder(venv / ("Scripts" if os.name == "nt" else "bin") / "python", log)
        PipInstaller().install(venv, plan, tmp_path / "i.log")
    calls = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert [call[call.index("--") + 1:] for call in calls] == [["six"], ["tabulate"]]

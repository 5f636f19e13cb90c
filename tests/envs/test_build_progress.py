"""A real ``owllm env test`` with stderr to a file (as in CI) says what it is doing: step and
heartbeat lines on stderr, the JSON result alone on stdout.  And the install step names a
source build (llama-cpp-python) unless OWLLM kept its wheel."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from owllm.envs.installer import (
    InstallPlan,
    PipInstaller,
    UvInstaller,
    Wheelhouse,
    describe_install,
)
from owllm.envs.pipconf import PipSettings
from owllm.envs.spec import BuildSpec

CONFIG = 'version: 1\nmodels:\n  small: {base_model: "demo://tiny-llama", device: cpu}\n'


def test_env_test_reports_progress_on_stderr_only(tmp_home: Path, tiny_envs: Path,
                                                  tmp_path: Path) -> None:
    (tmp_home / "configs").mkdir()
    (tmp_home / "configs" / "llm_backends.yaml").write_text(CONFIG, encoding="utf-8")
    shutil.copy(tiny_envs, tmp_home / "configs" / "envs.yaml")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTEST_CURRENT_TEST", "OWLLM_PROGRESS")}  # as a user's shell
    env.update(OWLLM_HOME=str(tmp_home), OWLLM_HARDWARE="{}", OWLLM_PROGRESS_INTERVAL_S="0.05")
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out_path.open("w") as out, err_path.open("w") as err:
        done = subprocess.run([sys.executable, "-m", "owllm", "env", "test", "tiny"],
                              stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                              cwd=tmp_home, timeout=600, check=False)
    stdout, stderr = out_path.read_text(), err_path.read_text()
    assert done.returncode == 0, stdout + stderr
    result = json.loads(stdout)  # stdout is the JSON result and nothing else
    assert result["env_key"] == "tiny" and result["status"] == "PASS"
    assert "owllm:" not in stdout

    lines = stderr.splitlines()
    assert all(line.startswith("owllm: ") for line in lines), stderr  # nothing interleaved
    log = tmp_home / ".owllm" / "logs" / "env-tiny.log"
    assert lines[0] == f"owllm: building env tiny (log: {log}) ..."
    for step in ("creating the venv with ", "installing 2 packages into tiny with ",
                 "probing the new env tiny"):
        assert any(re.match(rf"owllm:   {step}.*\.\.\.$", line) for line in lines), stderr
        assert any(re.match(rf"owllm:   {step}.*: ok \(\d+\.\ds\)$", line) for line in lines)
    assert [line for line in lines if re.match(r"owllm: (  )?.+: still running, \d+\.\ds", line)]
    assert re.search(rf"^owllm: building env tiny \(log: {re.escape(str(log))}\): ok \(",
                     stderr, re.MULTILINE)
    assert re.match(r"owllm: probing env tiny: ok \(\d+\.\ds\)$", lines[-1]), stderr


def test_install_step_names_a_source_build(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OWLLM_WHEEL_CACHE", str(tmp_path / "wheels"))
    spec = BuildSpec(key="llamacpp-cpu", packages=("llama-cpp-python[server]==0.3.36", "gguf"),
                     build_env=("CMAKE_ARGS=-DLLAVA_BUILD=OFF",),
                     keep_built_wheels=("llama-cpp-python",))
    plan, uv = InstallPlan(spec=spec, pip=PipSettings()), UvInstaller("uv")
    compiling = "installing 2 packages into llamacpp-cpu with uv (compiling llama-cpp-python"
    assert describe_install(uv, plan).startswith(compiling)
    house = Wheelhouse(spec).path
    house.mkdir(parents=True)
    (house / "llama_cpp_python-0.3.35-py3-none-linux_x86_64.whl").touch()  # an older pin
    assert describe_install(uv, plan).startswith(compiling)
    (house / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl").touch()
    assert describe_install(uv, plan).endswith("(llama-cpp-python from OWLLM's kept wheel)")
    assert "compiling llama-cpp-python" in describe_install(PipInstaller(), plan)  # keeps none
    plain = BuildSpec(key="tiny", packages=("six",))
    assert describe_install(uv, InstallPlan(spec=plain, pip=PipSettings())) == \
        "installing 1 package into tiny with uv"

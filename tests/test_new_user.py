"""A new user, end to end: OWLLM's wheel (not this checkout) installed into a fresh venv of an
empty project folder outside the repository, ``owllm init``, then the README's
``pytest --owllm-model demo -n 2 --junitxml=report.xml`` there.

Nothing points at the checkout or at a test home: the project folder is the OWLLM home, as
for a real user (its ``configs/`` folder makes it so), and the venv is the project's
``.venv``.  Package sources are pip's configuration passed to uv, as OWLLM's env builds do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from owllm.envs.installer import find_uv
from owllm.envs.pipconf import read_pip_settings, uv_source_args
from owllm.state_store import StateStore

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def user_env(venv: Path) -> dict[str, str]:
    """The environment of a user who activated the project's venv: none of this test run's
    pytest or OWLLM settings (the orphan check's token stays, so leftovers are caught)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "OWLLM_HOME")) and k != "PYTHONPATH"}
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(argv: list[str | os.PathLike[str]], cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, (f"{argv} exited {proc.returncode}\n"
                                  f"{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}")
    return proc


def test_a_new_project_runs_the_builtin_suites_from_the_wheel(
        tmp_path: Path, record_property: pytest.RecordProperty) -> None:
    project = tmp_path / "my-project"
    project.mkdir()
    timings: dict[str, float] = {}
    start = time.perf_counter()

    # The wheel, as `pip install owllm` would get it.
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", REPO, "-w", tmp_path / "dist"],
        cwd=project)
    wheel = next((tmp_path / "dist").glob("owllm-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.startswith("model_suites/")]
    assert {f"pytest_owllm/suites/test_{s}.py" for s in ("env", "model", "tools", "fuzz")} \
        <= set(names)
    timings["wheel_s"] = time.perf_counter() - start

    # A fresh venv in the project; pytest-xdist for -n 2.
    mark = time.perf_counter()
    venv = project / ".venv"
    uv = find_uv()
    assert uv, "uv is one of OWLLM's dependencies"
    run([uv, "venv", "-q", "--python", sys.executable, venv], cwd=project)
    run([uv, "pip", "install", "-q", "--python", venv / "bin" / "python", wheel, "pytest-xdist",
         *uv_source_args(read_pip_settings())], cwd=project, timeout=600)
    env = user_env(venv)
    where = run([venv / "bin" / "python", "-c",
                 "import pytest_owllm; print(pytest_owllm.__file__)"], cwd=project, env=env).stdout
    assert Path(where.strip()).is_relative_to(venv)  # the wheel's copy, not this checkout
    assert not list(venv.glob("lib/python*/site-packages/model_suites"))
    timings["install_s"] = time.perf_counter() - mark

    run([venv / "bin" / "owllm", "init"], cwd=project, env=env)
    assert (project / "configs" / "llm_backends.yaml").is_file()

    # The README's command.  The env build (uv's cache) and the demo model happen here.
    mark = time.perf_counter()
    proc = run([venv / "bin" / "pytest", "--owllm-model", "demo", "-n", "2",
                "--junitxml=report.xml"], cwd=project, env=env, timeout=1200)
    timings["pytest_s"] = time.perf_counter() - mark
    timings["total_s"] = time.perf_counter() - start

    suite = ET.parse(project / "report.xml").getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("0", "0", "0")
    cases = {f"{c.get('classname')}::{c.get('name')}": c for c in suite.iter("testcase")}
    assert set(cases) == {
        "pytest_owllm.suites.test_env::test_env_health[torch-cpu-transformers]",
        "pytest_owllm.suites.test_model::test_generate[demo]",
        "pytest_owllm.suites.test_tools::test_tool_round_trip[demo]",
        "pytest_owllm.suites.test_fuzz::test_constrained_output_is_always_a_valid_call[demo]",
        "pytest_owllm.suites.test_example_answers::test_greedy_answers_are_reproducible[demo]",
        "pytest_owllm.suites.test_example_answers::test_max_tokens_is_respected[demo]",
        "model_suites.test_my_answers::test_answers_a_question[demo]",
    }, proc.stdout[-3000:]

    def props(name: str) -> dict[str, str | None]:
        return {p.get("name") or "": p.get("value") for p in cases[name].iter("property")}

    generate = props("pytest_owllm.suites.test_model::test_generate[demo]")
    assert generate["env_key"] == "torch-cpu-transformers"
    assert float(generate["startup_s"] or 0) > 0 and float(generate["tokens_per_s"] or 0) > 0
    env_health = props("pytest_owllm.suites.test_env::test_env_health[torch-cpu-transformers]")
    assert (env_health["torch_version"] or "").startswith("2.13.0")
    assert Path(env_health["python_path"] or "").is_relative_to(project / ".envs")

    # The project is the home, and the run stopped the server it started.
    row = StateStore(project / ".owllm" / "state.db").get_server("demo")
    assert row is not None and row["status"] == "STOPPED"

    for name, seconds in timings.items():
        record_property(name, round(seconds, 1))
    print("new user:", ", ".join(f"{k}={v:.1f}" for k, v in timings.items()))

"""A fourth backend registered from outside OWLLM (issue 14): ``tests/backends/fourth_backend``
holds a package, ``owllm_greedy``, and its ``.dist-info`` whose ``entry_points.txt`` declares
``transformers-greedy`` in the ``owllm.backends`` group.  With that folder on ``PYTHONPATH``
(and no OWLLM file touched) a config naming the backend validates, ``owllm server start``
starts it, ``owllm model smoke`` passes and the built-in model suites run against it.

The backend's env is the transformers package set under its own key
(``torch-cpu-transformers-greedy``).  So that no torch env is built here, the tmp home's
StateStore is told that key is READY at the interpreter of the cached transformers env
(tests/backends/conftest.py, shared through ~/.cache/owllm-tests): the same packages, the
fingerprint OWLLM itself computes for the key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from owllm.backends import backend_names
from tests.procs import gone

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
FOURTH = Path(__file__).resolve().parent / "fourth_backend"
KEY = "torch-cpu-transformers-greedy"
CONFIG = textwrap.dedent("""\
    models:
      greedy:
        base_model: "demo://tiny-llama"
        backend: transformers-greedy
        device: cpu
        max_model_len: 1024
        generation: {max_tokens: 16}
    """)

# Runs with the fourth backend on the path: marks KEY READY in the home at the cached env.
SEED = textwrap.dedent("""\
    import json, sys
    from pathlib import Path
    from owllm.envs import EnvRegistry, layout
    from owllm.state_store import ENV_READY
    home, config, cached = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    registry = EnvRegistry(home=home, config_path=config, progress=False)
    resolution = registry.resolve("greedy")
    # The published link (the env probe runs .envs/<key>/.venv/bin/python) and the row.
    link = layout.link_path(registry.home, resolution.key)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(Path(cached["path"]).resolve(), target_is_directory=True)
    registry.store.upsert_env(
        resolution.key, status=ENV_READY, path=str(link),
        python_path=str(layout.python_for(link)), torch_version=cached["torch_version"],
        cuda_available=cached["cuda_available"], packages=cached["packages"],
        fingerprint=registry.fingerprint(resolution.spec), spec=resolution.spec.to_dict())
    print(json.dumps(resolution.to_dict()))
    """)


def plugin_env(home: Path) -> dict[str, str]:
    """This environment with the fourth backend's folder first on the path."""
    path = os.pathsep.join(p for p in (str(FOURTH), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OWLLM_HOME": str(home)}


def owllm(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "owllm", *args], capture_output=True,
                          text=True, timeout=600, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, transformers_env: Any
            ) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("fourth")
    home = root / "home"
    config = home / "configs" / "llm_backends.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(CONFIG, encoding="utf-8")
    env = plugin_env(home)
    cached = {"path": str(transformers_env.path),
              "python": str(transformers_env.python_executable),
              "torch_version": transformers_env.torch_version,
              "cuda_available": transformers_env.cuda_available,
              "packages": transformers_env.packages}
    seeded = subprocess.run([sys.executable, "-c", SEED, str(home), str(config),
                             json.dumps(cached)], capture_output=True, text=True, env=env,
                            timeout=120, cwd=root)
    assert seeded.returncode == 0, seeded.stderr
    info = {"root": root, "home": home, "config": config, "env": env,
            "resolution": json.loads(seeded.stdout)}
    yield info
    owllm("server", "stop", "greedy", "--home", str(home), env=env, cwd=root)


def test_the_backend_is_only_in_the_test_package() -> None:
    """Nothing of OWLLM names it: the entry point is the only link."""
    hits = subprocess.run(["git", "grep", "--untracked", "-l", "transformers-greedy", "--", "owllm",
                           "pytest_owllm", "model_suites", "configs", "pyproject.toml"],
                          cwd=REPO, capture_output=True, text=True)
    assert hits.stdout == ""
    entry = FOURTH / "owllm_greedy-0.1.0.dist-info" / "entry_points.txt"
    assert "[owllm.backends]" in entry.read_text()


def test_a_config_naming_it_validates_and_resolves(project: dict[str, Any]) -> None:
    env, root = project["env"], project["root"]
    models = owllm("models", "--home", str(project["home"]), "--json", env=env, cwd=root)
    assert models.returncode == 0, models.stderr
    assert project["resolution"]["env_key"] == KEY
    assert "transformers" in project["resolution"]["packages"]  # the transformers set
    resolved = owllm("env", "resolve", "greedy", "--home", str(project["home"]), "--json",
                     env=env, cwd=root)
    assert resolved.returncode == 0, resolved.stderr
    assert KEY in resolved.stdout
    # Without the package on the path the same file is a file:line error naming the
    # installed backends.
    bare = {**env, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    refused = owllm("models", "--home", str(project["home"]), "--json", env=bare, cwd=root)
    assert refused.returncode != 0
    installed = ", ".join(backend_names())  # OWLLM's own: this process has no plugin
    assert "transformers-greedy" not in installed
    assert ("llm_backends.yaml:4: models.greedy.backend: unknown backend "
            f"'transformers-greedy'; installed backends: {installed}") in refused.stderr


def test_its_own_validation_names_the_field(project: dict[str, Any], tmp_path: Path) -> None:
    bad = tmp_path / "configs" / "llm_backends.yaml"
    bad.parent.mkdir()
    bad.write_text(CONFIG.replace("{max_tokens: 16}", "{max_tokens: 16, temperature: 0.7}")
                   + "    use_4bit: true\n", encoding="utf-8")
    result = owllm("models", "--config", str(bad), "--home", str(tmp_path / "h"), "--json",
                   env=project["env"], cwd=tmp_path)
    assert result.returncode != 0
    assert "models.greedy.generation: backend transformers-greedy decodes greedily" \
        in result.stderr
    assert "models.greedy.use_4bit: bitsandbytes 4-bit is a transformers option, not " \
           "transformers-greedy's" in result.stderr


def test_server_start_smoke_and_the_builtin_suites(project: dict[str, Any]) -> None:
    env, root, home = project["env"], project["root"], str(project["home"])
    started = owllm("server", "start", "greedy", "--home", home, "--json", env=env, cwd=root)
    assert started.returncode == 0, started.stderr[-3000:]
    row = json.loads(started.stdout)
    assert row["status"] == "RUNNING"
    server = psutil.Process(row["pid"])
    # OWLLM's transformers server, launched by the fourth backend with its own arguments
    assert server.environ().get("OWLLM_GREEDY_BACKEND") == "transformers-greedy"
    run_file = json.loads((project["home"] / ".owllm" / "run" / "greedy.json").read_text())
    assert run_file["generation"]["temperature"] == 0.0
    assert run_file["system_prompt"] == "You answer briefly."

    smoke = owllm("model", "smoke", "greedy", "--home", home, "--json", env=env, cwd=root)
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr[-3000:]
    result = json.loads(smoke.stdout)
    assert (result["status"], result["generate_ok"], result["errors"]) == ("PASS", True, [])
    stopped = owllm("server", "stop", "greedy", "--home", home, "--json", env=env, cwd=root)
    assert stopped.returncode == 0, stopped.stderr
    assert gone(row["pid"])

    # The built-in suites (env, model, tools, fuzz, example answers) against it.
    suites = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--noconftest", "-q",
         "--owllm-model", "greedy", "--owllm-config", str(project["config"]),
         "--owllm-home", home],
        capture_output=True, text=True, timeout=900, env=env, cwd=root)
    assert suites.returncode == 0, suites.stdout[-4000:] + suites.stderr[-2000:]
    assert " passed" in suites.stdout and "failed" not in suites.stdout

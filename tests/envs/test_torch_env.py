"""The real torch-cpu-transformers env (built once per session from this host's pip config:
the local torch 2.13.0+cpu wheel, never a CUDA build)."""

from __future__ import annotations

import subprocess

from owllm.envs import EnvRegistry, EnvSpec


def test_torch_cpu_transformers(torch_env: tuple[EnvRegistry, EnvSpec]) -> None:
    registry, env = torch_env
    assert env.key == "torch-cpu-transformers"
    assert env.torch_version == "2.13.0+cpu" and env.cuda_available is False
    assert not any(name.startswith("nvidia-") for name in env.packages)
    result = registry.probe(env.key)
    assert result["status"] == "PASS", result["errors"]
    assert result["versions"]["transformers"] and result["versions"]["llguidance"]
    assert "torch==2.13.0+cpu" in registry.constraints_path(env.key).read_text()


def test_published_env_imports_transformers(torch_env: tuple[EnvRegistry, EnvSpec]) -> None:
    _, env = torch_env
    done = subprocess.run([str(env.python_executable), "-c",
                           "import transformers, torch; print(torch.__version__)"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "2.13.0+cpu", done.stderr

"""Fixtures for env tests: a tiny envs.yaml (no torch) and a registry on a tmp home."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from owllm.envs import EnvRegistry, EnvSpec
from owllm.hardware import HardwareProfile

CPU_HOST = HardwareProfile(arch="x86_64", os="linux", source="test")

TINY_ENVS = textwrap.dedent("""\
    version: 1
    cuda_tags: [cu118, cu121, cu124]
    backends:
      transformers:
        framework: torch
        packages: [six]
        probe_imports: [six]
    features:
      bnb: {packages: [packaging], backends: [transformers]}
    keys:
      tiny:
        packages: [six, tabulate]
        probe_imports: [six, tabulate]
        key_packages: [six, tabulate]
    """)


@pytest.fixture
def tiny_envs(tmp_path: Path) -> Path:
    path = tmp_path / "envs.yaml"
    path.write_text(TINY_ENVS, encoding="utf-8")
    return path


@pytest.fixture
def registry(tmp_home: Path, tiny_envs: Path) -> EnvRegistry:
    return EnvRegistry(home=tmp_home, envs_config_path=tiny_envs, profile=CPU_HOST,
                       progress=False)


@pytest.fixture(scope="session")
def torch_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[EnvRegistry, EnvSpec]:
    """The real torch-cpu-transformers env, built once per test session."""
    home = tmp_path_factory.mktemp("torch-home")
    registry = EnvRegistry(home=home, profile=CPU_HOST, progress=False)
    return registry, registry.ensure_env("torch-cpu-transformers")

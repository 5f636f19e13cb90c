"""Shared Python environments: env_key resolution, atomic provisioning, health probe,
constraints files and migration from per-model envs."""

from __future__ import annotations

from owllm.envs.registry import EnvRegistry, EnvSpec
from owllm.envs.resolve import Resolution, resolve_env_key
from owllm.envs.spec import BuildSpec, EnvsConfig, find_envs_config, load_envs_config

__all__ = ["BuildSpec", "EnvRegistry", "EnvSpec", "EnvsConfig", "Resolution",
           "find_envs_config", "load_envs_config", "resolve_env_key"]

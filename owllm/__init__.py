"""OWLLM: a reliability layer for self-hosted LLM servers."""

from __future__ import annotations

from owllm._version import __version__
from owllm.config import Config, ModelConfig, load_config
from owllm.envs import EnvRegistry, EnvSpec
from owllm.errors import (
    ConfigError,
    EnvError,
    OwllmError,
    ServerError,
    ServerStartTimeout,
    StateStoreError,
    UsageError,
)
from owllm.paths import Home, resolve_home
from owllm.servers import LLMServerManager, get_llm_server_manager
from owllm.state_store import StateStore, get_state_store

__all__ = [
    "Config",
    "ConfigError",
    "EnvError",
    "EnvRegistry",
    "EnvSpec",
    "Home",
    "LLMServerManager",
    "ModelConfig",
    "OwllmError",
    "ServerError",
    "ServerStartTimeout",
    "StateStore",
    "StateStoreError",
    "UsageError",
    "__version__",
    "get_llm_server_manager",
    "get_state_store",
    "load_config",
    "resolve_home",
]

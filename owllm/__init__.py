"""OWLLM: a reliability layer for self-hosted LLM servers.

The public API is what ``__all__`` lists (tests/test_exports.py pins it); everything else is
internal and may change.
"""

from __future__ import annotations

from owllm._smoke_results import EnvTestResult, ModelSmokeResult, ToolsSmokeResult
from owllm._version import __version__
from owllm.config import Config, ModelConfig, load_config
from owllm.envs import EnvRegistry, EnvSpec
from owllm.errors import (
    ConfigError,
    EnvError,
    InEnvError,
    OwllmError,
    PortInUse,
    ServerDied,
    ServerError,
    ServerStartTimeout,
    StateStoreError,
    UsageError,
)
from owllm.paths import Home, resolve_home
from owllm.servers import LLMServerManager, get_llm_server_manager
from owllm.smoke import env_test, model_smoke, serving, tools_smoke
from owllm.state_store import StateStore, get_state_store

__all__ = [
    "Config",
    "ConfigError",
    "EnvError",
    "EnvRegistry",
    "EnvSpec",
    "EnvTestResult",
    "Home",
    "InEnvError",
    "LLMServerManager",
    "ModelConfig",
    "ModelSmokeResult",
    "OwllmError",
    "PortInUse",
    "ServerDied",
    "ServerError",
    "ServerStartTimeout",
    "StateStore",
    "StateStoreError",
    "ToolsSmokeResult",
    "UsageError",
    "__version__",
    "env_test",
    "get_llm_server_manager",
    "get_state_store",
    "load_config",
    "model_smoke",
    "resolve_home",
    "serving",
    "tools_smoke",
]

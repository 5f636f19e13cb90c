"""Backends behind one small Protocol: how to prepare a model, launch its server, and know
it is ready.  Every backend speaks the OpenAI-compatible HTTP API, so smoke tests, tool calls
and users' own clients work the same on all of them.

Adding a backend (say SGLang or TGI) is one module here plus an entry in ``BACKENDS`` and in
``configs/envs.yaml``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from owllm.backends._kernels import KernelChoice
    from owllm.config import ModelConfig
    from owllm.envs import EnvRegistry, EnvSpec
    from owllm.paths import Home


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; a missing capability is reported, never counted as a failure."""

    chat: bool = True
    completions: bool = True
    streaming: bool = True
    structured_output: bool = True
    tools: bool = True
    # JSON-schema keywords ("<type>.<keyword>") the backend's constrained decoder does not
    # enforce; output may break them, and OWLLM's validator then rejects the call.
    unenforced_keywords: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    def enforces(self, schema: dict[str, Any]) -> bool:
        """False when ``schema`` (one level) uses a keyword listed as unenforced."""
        kind = schema.get("type")
        return not any(f"{kind}.{key}" in self.unenforced_keywords for key in schema)


@dataclass(frozen=True)
class LaunchSpec:
    """The command that runs a model's server, and how to tell it is ready."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    health_path: str = "/health"
    # A real generation is part of readiness when /health alone can lie (vLLM keeps answering
    # 200 after its engine died).
    ready_needs_completion: bool = False
    # Host-dependent CPU settings (dtype, kernel families) and why they have their value;
    # one with a ``fallback`` is retried with it when the server dies of a CPU fault.
    kernels: tuple[KernelChoice, ...] = ()


@dataclass(frozen=True)
class BackendContext:
    """What a backend may use while preparing and launching one model."""

    home: Home
    env: EnvSpec  # the model's own env (the server runs with its python)
    base_dir: Path  # where relative paths in the config resolve
    registry: EnvRegistry  # for helper envs (building a demo model for llama.cpp)
    # Kernel choices forced for this start (after a CPU fault), by setting name.
    kernel_overrides: Mapping[str, KernelChoice] = field(default_factory=dict)


class Backend(Protocol):
    name: str
    capabilities: Capabilities

    def model_path(self, model: ModelConfig, ctx: BackendContext) -> Path | str:
        """Materialize or locate the weights the server loads (demo models, conversions)."""
        ...

    def launch(self, model: ModelConfig, model_path: Path | str, ctx: BackendContext,
               host: str, port: int) -> LaunchSpec:
        """The server command for one model on ``host:port``."""
        ...


BACKENDS: dict[str, str] = {
    "transformers": "owllm.backends.transformers:TransformersBackend",
    "vllm": "owllm.backends.vllm:VllmBackend",
    "llamacpp": "owllm.backends.llamacpp:LlamaCppBackend",
}


def get_backend(name: str) -> Backend:
    from owllm.errors import UsageError

    try:
        target = BACKENDS[name]
    except KeyError:
        raise UsageError(
            f"backend {name!r} is not available in this OWLLM build",
            hint=f"available backends: {', '.join(sorted(BACKENDS))}",
        ) from None
    module_name, _, attr = target.partition(":")
    backend: Backend = getattr(import_module(module_name), attr)()
    return backend

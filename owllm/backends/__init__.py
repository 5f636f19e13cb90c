"""Backends behind one small Protocol: how to prepare a model, launch its server, and know
it is ready.  Every backend speaks the OpenAI-compatible HTTP API, so smoke tests, tool calls
and users' own clients work the same on all of them.

Adding a backend (say SGLang or TGI) is one module here plus an entry in ``BACKENDS`` and in
``configs/envs.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from owllm.config import ModelConfig
    from owllm.envs import EnvSpec
    from owllm.paths import Home


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; a missing capability is reported, never counted as a failure."""

    chat: bool = True
    completions: bool = True
    streaming: bool = True
    structured_output: bool = True
    tools: bool = True

    def to_dict(self) -> dict[str, bool]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class LaunchSpec:
    """The command that runs a model's server, and how to tell it is ready."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    health_path: str = "/health"
    # A real generation is part of readiness when /health alone can lie (vLLM keeps answering
    # 200 after its engine died).
    ready_needs_completion: bool = False


class Backend(Protocol):
    name: str
    capabilities: Capabilities

    def model_path(self, model: ModelConfig, home: Home, env: EnvSpec,
                   base_dir: Path) -> Path | str:
        """Materialize or locate the weights the server loads (demo models, conversions)."""
        ...

    def launch(self, model: ModelConfig, model_path: Path | str, env: EnvSpec, home: Home,
               host: str, port: int) -> LaunchSpec:
        """The server command for one model on ``host:port``."""
        ...


BACKENDS: dict[str, str] = {
    "transformers": "owllm.backends.transformers:TransformersBackend",
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

"""Backends behind one small Protocol: everything OWLLM knows about one serving engine.

A backend says how to prepare a model and launch its server, and also owns what the rest
of OWLLM used to keep in lists of its own: the config options it accepts
(:meth:`Backend.config_problems`), its quant types, the tool-call prompt template, its
capabilities and the packages of its env (:attr:`Backend.env_packages`, the shape of an
``envs.yaml`` ``backends.<name>`` entry, which a user's envs.yaml may still override).

Backends are found through the ``owllm.backends`` entry point group: the name of the entry
point is the backend name, its value the class (``pkg.module:Class``).  OWLLM's own three
are declared in its ``pyproject.toml`` exactly as a third party declares one, so adding a
backend touches no OWLLM file.  This module is a low layer (config imports it): it imports
nothing of owllm above :mod:`owllm.errors` at module level, and loads a backend's module
only when that backend is asked for.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from owllm.errors import UsageError

if TYPE_CHECKING:
    from owllm.backends._kernels import KernelChoice
    from owllm.config import ModelConfig
    from owllm.envs import EnvRegistry, EnvSpec
    from owllm.paths import Home

__all__ = [
    "ENDPOINT_FIELDS",
    "ENTRY_POINT_GROUP",
    "TOOL_CALL_RULES",
    "Backend",
    "BackendContext",
    "Capabilities",
    "LaunchSpec",
    "backend_names",
    "get_backend",
    "is_attached",
    "option_problems",
]

#: The entry point group every backend registers in (``name = "module:Class"``).
ENTRY_POINT_GROUP = "owllm.backends"

# The built-in backends, used only when OWLLM runs from a source tree that was never
# installed (no distribution metadata, so no entry points): the same three pyproject.toml
# declares.
_SOURCE_TREE_BACKENDS = {
    "transformers": "owllm.backends.transformers:TransformersBackend",
    "vllm": "owllm.backends.vllm:VllmBackend",
    "llamacpp": "owllm.backends.llamacpp:LlamaCppBackend",
    "remote": "owllm.backends.remote:RemoteBackend",
    "ray": "owllm.backends.ray:RayBackend",
}

#: What every tool-call prompt template asks for: one strict JSON envelope.  A backend's
#: :attr:`Backend.prompt_template` embeds it (``{{``/``}}`` because templates are
#: ``str.format`` strings with the fields ``{tools}`` and ``{prompt}``).
TOOL_CALL_RULES = (
    'Reply with exactly one JSON object and nothing else: {{"tool": "<tool name>", '
    '"args": {{<arguments>}}, "id": "call_1"}}. No markdown, no code fences, no prose, '
    "no XML, no function-call syntax. Use only the tools listed and only their parameters."
)


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
    # Where the server answers, when not at ``http://host:port`` (a Ray Serve application
    # behind its route prefix): recorded as the row's url, used by readiness and clients.
    url: str | None = None


@dataclass(frozen=True)
class BackendContext:
    """What a backend may use while preparing and launching one model."""

    home: Home
    env: EnvSpec  # the model's own env (the server runs with its python)
    base_dir: Path  # where relative paths in the config resolve
    registry: EnvRegistry  # for helper envs (building a demo model for llama.cpp)
    # Kernel choices forced for this start (after a CPU fault), by setting name.
    kernel_overrides: Mapping[str, KernelChoice] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """One serving engine.  Implementations are plain classes with these attributes; the
    registry instantiates them with no arguments.

    Optional: ``attach(model) -> dict`` makes the backend one OWLLM attaches to rather than
    launches (``remote``): the manager provisions no env, calls it instead of ``launch``
    and records the fields it returns in the server's row (:func:`is_attached`).

    Optional: ``host_build_env(cuda, build_env) -> dict`` adapts the env's build settings
    (``env_packages`` ``build_env``) to this host; llama.cpp leaves out instruction sets the
    CPU lists but cannot run.  It applies to a user's envs.yaml entry for the backend too."""

    name: str
    capabilities: Capabilities
    #: ``quant:`` values the backend accepts (lower case); empty: ``quant:`` is an error.
    quant_types: tuple[str, ...]
    #: The tool-call prompt (``str.format`` fields ``{tools}`` and ``{prompt}``), embedding
    #: :data:`TOOL_CALL_RULES`.
    prompt_template: str
    #: What the backend's env installs: an envs.yaml ``backends.<name>`` entry (framework,
    #: packages, torch pins per wheel tag, cpu/cuda variants, probe_imports, key_packages).
    #: An entry of the same name in the user's envs.yaml replaces it.
    env_packages: Mapping[str, Any]

    def config_problems(self, model: ModelConfig) -> list[tuple[str, str]]:
        """``(field, message)`` for each option of ``model`` this backend cannot honour;
        :func:`owllm.config.load_config` reports them as ``file:line`` errors."""
        ...

    def model_path(self, model: ModelConfig, ctx: BackendContext) -> Path | str:
        """Materialize or locate the weights the server loads (demo models, conversions)."""
        ...

    def launch(self, model: ModelConfig, model_path: Path | str, ctx: BackendContext,
               host: str, port: int) -> LaunchSpec:
        """The server command for one model on ``host:port``."""
        ...


#: The fields of an endpoint OWLLM attaches to instead of launching (``backend: remote``).
ENDPOINT_FIELDS = ("base_url", "served_model", "headers", "timeout_s")


def option_problems(model: ModelConfig, *, four_bit: bool = False, adapters: bool = False,
                    quant_types: tuple[str, ...] = (),
                    endpoint: bool = False) -> list[tuple[str, str]]:
    """The checks most backends share, for :meth:`Backend.config_problems`: bitsandbytes
    4-bit (``use_4bit``), LoRA adapters (``adapter_dir``), ``quant:`` (GGUF types) and the
    endpoint fields (:data:`ENDPOINT_FIELDS`), each an error unless the backend says it
    serves it."""
    problems = []
    if not endpoint:
        problems += [(name, f"{name} configures an existing endpoint and applies to "
                      f"backend: remote only, not {model.backend}")
                     for name in ENDPOINT_FIELDS if getattr(model, name)]
    if model.use_4bit and not four_bit:
        problems.append(("use_4bit", f"bitsandbytes 4-bit is a transformers option, not "
                         f"{model.backend}'s; for llamacpp set quant: q4_k_m, for vllm serve "
                         "a pre-quantized checkpoint (AWQ, GPTQ)"))
    if model.adapter_dir and not adapters:
        problems.append(("adapter_dir", f"LoRA adapters are served by backend: transformers "
                         f"only in OWLLM; merge the adapter into the weights for "
                         f"{model.backend}"))
    if model.quant is not None and not quant_types:
        problems.append(("quant", "quant: is GGUF quantization and applies to "
                         "backend: llamacpp only"))
    elif model.quant is not None and model.quant.lower() not in quant_types:
        problems.append(("quant", f"unknown quant {model.quant!r}; "
                         f"known: {', '.join(quant_types)}"))
    return problems


@cache
def _entry_points() -> dict[str, metadata.EntryPoint]:
    """Installed backends by name (entry point metadata only: nothing is imported)."""
    found: dict[str, metadata.EntryPoint] = {}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        # Two distributions may both be visible (an editable install and a wheel of the
        # same project): the first on sys.path wins, as for imports.
        found.setdefault(entry.name, entry)
    try:
        metadata.distribution("owllm")
    except metadata.PackageNotFoundError:
        for name, value in _SOURCE_TREE_BACKENDS.items():
            found.setdefault(name, metadata.EntryPoint(name, value, ENTRY_POINT_GROUP))
    return found


def backend_names() -> tuple[str, ...]:
    """The installed backends' names, sorted (the config schema's ``backend`` enum)."""
    return tuple(sorted(_entry_points()))


def _normalized(name: str) -> str:
    return re.sub(r"[._-]", "", name.lower())


@cache
def _load(name: str) -> Backend:
    entry = _entry_points()[name]
    try:
        backend = entry.load()()
    except Exception as exc:  # a third-party plugin's own bug: name it, do not crash
        raise UsageError(f"backend {name!r} ({entry.value}) failed to load: {exc!r}",
                         hint="reinstall the package that provides it") from exc
    missing = [a for a in ("name", "capabilities", "quant_types", "prompt_template",
                           "env_packages", "config_problems", "model_path", "launch")
               if not hasattr(backend, a)]
    if missing:
        raise UsageError(f"backend {name!r} ({entry.value}) does not implement the backend "
                         f"contract: missing {', '.join(missing)}",
                         hint="see owllm.backends.Backend")
    return backend


def get_backend(name: str) -> Backend:
    """The installed backend called ``name`` (``llama.cpp``/``llama_cpp`` also name
    ``llamacpp``); a UsageError listing the installed ones otherwise."""
    entries = _entry_points()
    if name not in entries:
        aliases = [n for n in entries if _normalized(n) == _normalized(name)]
        if len(aliases) != 1:
            raise UsageError(f"backend {name!r} is not installed",
                             hint=f"installed backends: {', '.join(backend_names())}")
        name = aliases[0]
    return _load(name)


def is_attached(name: str) -> bool:
    """True for a backend OWLLM attaches to instead of launching (it has ``attach``, as
    ``remote`` does): no env is provisioned for it and its rows record no process."""
    return hasattr(get_backend(name), "attach")

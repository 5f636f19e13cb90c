"""Load and validate ``configs/llm_backends.yaml`` into frozen dataclasses.

Validation is a JSON Schema shipped in the package (``owllm/schemas/``), so the rules live in
one place that editors can use too; its ``backend`` enum is filled from the installed
backends (:func:`owllm.backends.backend_names`), and each backend then checks the options it
cannot honour (:meth:`owllm.backends.Backend.config_problems`).  Every problem is reported
at once, each as ``<file>:<line>: <dotted.path>: <message>``; unknown keys and duplicate
keys are errors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jsonschema

from owllm._yaml_lines import Key, display, load_validated, schema_message
from owllm.backends import backend_names, get_backend
from owllm.checks import Checks, build_checks, located_problems, merged, with_checks
from owllm.errors import ConfigError, OwllmError
from owllm.paths import home_for_config

DEMO_SCHEME = "demo://"


@dataclass(frozen=True)
class GenerationDefaults:
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0


@dataclass(frozen=True)
class RayOptions:
    """``ray:`` of a ``backend: ray`` model (owllm/backends/ray.py; README "backend: ray")."""

    address: str = "local"  # local | auto | ray://host:port | host:port
    replicas: int = 1
    num_cpus: float = 1.0  # per replica; fractional (0.5) packs two on one core
    num_gpus: float = 0.0
    route_prefix: str | None = None  # default /<model_id>
    engine: str = "transformers"  # transformers | vllm
    # address: local only: the head node's object store (Ray's minimum is 75 MB).
    object_store_mb: int | None = None
    # Where Serve's HTTP proxy answers on a cluster OWLLM did not start (address: local
    # uses the port OWLLM claims for the model).
    proxy_url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ModelConfig:
    """One entry of ``models:``; field meanings are documented in the README."""

    model_id: str
    base_model: str
    adapter_dir: str | None = None
    model_type: str = "instruct"
    port: int | None = None
    use_4bit: bool = False
    system_prompt: str = ""
    backend: str = "transformers"
    device: str = "auto"
    dtype: str = "auto"
    env_key: str | None = None
    requirements: tuple[str, ...] = ()
    max_model_len: int | None = None
    quant: str | None = None
    startup_timeout_s: float = 900.0
    stall_timeout_s: float = 300.0
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)
    server_args: tuple[str, ...] = ()
    # The variable that holds the server's API key (the name only: see owllm.httpclient).
    api_key_env: str | None = None
    # backend: remote (an endpoint OWLLM attaches to, owllm/backends/remote.py); any other
    # backend reports these as errors naming the field.
    base_url: str | None = None
    served_model: str | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    timeout_s: float | None = None
    # TLS of a remote endpoint: verified by default; ca_bundle adds a private CA (PEM).
    tls_verify: bool = True
    ca_bundle: str | None = None
    # backend: ray (a Ray Serve application, owllm/backends/ray.py); other backends report
    # it as an error naming the field.
    ray: RayOptions | None = None
    # Quality gates (owllm/checks.py), merged with the top-level default; None: no gates.
    checks: Checks | None = None
    line: int | None = None

    @property
    def is_demo(self) -> bool:
        """True when ``base_model`` names a model OWLLM materializes itself (``demo://…``)."""
        return self.base_model.startswith(DEMO_SCHEME)

    def params(self) -> dict[str, Any]:
        """The settings recorded in the StateStore next to the model (JSON-friendly)."""
        return {
            "adapter_dir": self.adapter_dir,
            "model_type": self.model_type,
            "port": self.port,
            "use_4bit": self.use_4bit,
            "system_prompt": self.system_prompt,
            "device": self.device,
            "dtype": self.dtype,
            "requirements": list(self.requirements),
            "max_model_len": self.max_model_len,
            "quant": self.quant,
            "api_key_env": self.api_key_env,
            "base_url": self.base_url,
            "served_model": self.served_model,
            # Names only: a header's value may be a credential.
            "headers": sorted(self.headers),
            "timeout_s": self.timeout_s,
            "tls_verify": self.tls_verify,
            "ca_bundle": self.ca_bundle,
            "ray": self.ray.to_dict() if self.ray else None,
            "generation": {
                "max_tokens": self.generation.max_tokens,
                "temperature": self.generation.temperature,
                "top_p": self.generation.top_p,
            },
        }


@dataclass(frozen=True)
class ToolEntry:
    callable: str
    name: str | None = None
    description: str | None = None
    parameters: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ToolServerSettings:
    host: str = "127.0.0.1"
    port: int = 8763
    call_timeout_s: float = 10.0
    api_key_env: str | None = None


@dataclass(frozen=True)
class Config:
    """A validated configuration file."""

    path: Path
    models: Mapping[str, ModelConfig]
    tools: tuple[ToolEntry, ...] = ()
    tool_server: ToolServerSettings = field(default_factory=ToolServerSettings)

    def model(self, model_id: str) -> ModelConfig:
        """Return one model, or raise a UsageError that lists the known ids."""
        from owllm.errors import UsageError
        from owllm.paths import check_model_id

        check_model_id(model_id)  # "../x" is not an id, whatever the config holds
        try:
            return self.models[model_id]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "(none)"
            raise UsageError(
                f"unknown model id {model_id!r} in {self.path}",
                hint=f"known model ids: {known}",
            ) from None

    @property
    def home_relative_base(self) -> Path:
        """Relative ``base_model``/``adapter_dir`` paths are resolved against this folder."""
        from owllm.paths import home_for_config

        return home_for_config(self.path)


@cache
def config_schema() -> dict[str, Any]:
    """The config's JSON Schema, with the ``backend`` enum set to the installed backends
    (the shipped file has none: the registry is the one list)."""
    text = resources.files("owllm.schemas").joinpath("llm_backends.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    schema["$defs"]["model"]["properties"]["backend"]["enum"] = list(backend_names())
    return with_checks(schema)


def _message(error: jsonschema.ValidationError) -> tuple[Key, str]:
    """Model ids, env keys and requirements get their own message; everything else is
    phrased the shared way."""
    if "propertyNames" in error.absolute_schema_path:
        return (*error.absolute_path, error.instance), (
            f"invalid model id {error.instance!r}: use letters, digits, '_', '.', '-' "
            "(starting with a letter or digit, at most 64 characters)"
        )
    path = tuple(error.absolute_path)
    if error.validator == "pattern" and len(path) == 4 and path[2] == "requirements":
        # uv and pip would read "--index-url=…" as an option (issue 13): never one.
        return path, (f"requirement {error.instance!r} is not a package spec: a requirement "
                      "must not start with '-' or a space, nor span lines (index URLs go in "
                      "envs.yaml extra_index_urls or pip.conf)")
    if error.validator == "enum" and len(path) == 3 and path[2] == "backend":
        return path, (f"unknown backend {error.instance!r}; installed backends: "
                      f"{', '.join(backend_names())}")
    if error.validator == "pattern" and len(path) == 3 and path[2] == "env_key":
        return path, (f"invalid env key {error.instance!r}: use letters, digits, '_', '.', "
                      "'-' (starting with a letter or digit, at most 100 characters)")
    return schema_message(error)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, validate and freeze a config file; raise ConfigError listing every problem."""
    path = Path(path)
    lines: dict[Key, int] = {}
    data = load_validated(
        path, config_schema(), "with a 'models' key",
        hint="the fields are documented in the README (Configuration)",
        message=_message,
        duplicate_label=lambda at: "model id" if at == ("models",) else "key",
        lines=lines,
    )
    base = home_for_config(path)
    models = {
        model_id: _model(model_id, entry or {}, lines.get(("models", model_id)), base,
                         data.get("checks"))
        for model_id, entry in data["models"].items()
    }
    problems = [f"{display(path)}:{_line(lines, m, field) or '?'}: "
                f"models.{m.model_id}.{field}: {message}"
                for m in models.values() for field, message in _backend_problems(m)]
    problems += located_problems(display(path), data,
                                 {m.model_id: m.checks for m in models.values()}, lines)
    if problems:
        raise ConfigError(display(path), problems,
                          hint="the fields are documented in the README (Configuration)")
    tools = tuple(ToolEntry(**t) for t in data.get("tools", []))
    server = ToolServerSettings(**data.get("tool_server", {}))
    return Config(path=path.resolve(), models=MappingProxyType(models), tools=tools,
                  tool_server=server)


def _line(lines: Mapping[Key, int], model: ModelConfig, field: str) -> int | None:
    """The line of ``field`` (dotted for a nested one: ``ray.address``), else of the
    nearest enclosing key, else of the model."""
    parts = field.split(".")
    for end in range(len(parts), 0, -1):
        line = lines.get(("models", model.model_id, *parts[:end]))
        if line is not None:
            return line
    return model.line


def _backend_problems(model: ModelConfig) -> list[tuple[str, str]]:
    """Options the model's backend cannot honour (the backend decides, naming the field)."""
    try:
        backend = get_backend(model.backend)
    except OwllmError as exc:  # installed (the schema said so) but broken
        return [("backend", exc.message)]
    problems = backend.config_problems(model)
    if model.backend != "remote":
        problems += [(name, f"{name} configures an endpoint's TLS and applies to "
                      f"backend: remote only, not {model.backend}")
                     for name, value in (("tls_verify", not model.tls_verify),
                                         ("ca_bundle", model.ca_bundle)) if value]
    if model.ray is not None and model.backend != "ray":
        problems.append(("ray", f"ray: configures backend: ray only, not {model.backend}"))
    return problems


def _model(model_id: str, entry: Mapping[str, Any], line: int | None,
           base: Path, default_checks: Mapping[str, Any] | None = None) -> ModelConfig:
    values = dict(entry)
    values["checks"] = build_checks(merged(default_checks, values.get("checks"), model_id),
                                    base)
    if values.get("ca_bundle"):  # relative to the config's home, like base_model
        values["ca_bundle"] = str(base / Path(values["ca_bundle"]).expanduser())
    values["generation"] = GenerationDefaults(**values.get("generation", {}))
    values["requirements"] = tuple(values.get("requirements", ()))
    values["server_args"] = tuple(values.get("server_args", ()))
    values["headers"] = MappingProxyType(dict(values.get("headers") or {}))
    if values.get("ray") is not None:
        values["ray"] = RayOptions(**values["ray"])
    if values.get("backend") == "remote":  # the endpoint's weights are not ours to name
        values.setdefault("base_model", values.get("served_model") or model_id)
    return ModelConfig(model_id=model_id, line=line, **values)

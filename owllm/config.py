"""Load and validate ``configs/llm_backends.yaml`` into frozen dataclasses.

Validation is a JSON Schema shipped in the package (``owllm/schemas/``), so the rules live in
one place that editors can use too.  Every problem is reported at once, each as
``<file>:<line>: <dotted.path>: <message>``; unknown keys and duplicate keys are errors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jsonschema
import yaml

from owllm.errors import ConfigError

BACKENDS = ("transformers", "vllm", "llamacpp")
DEMO_SCHEME = "demo://"


@dataclass(frozen=True)
class GenerationDefaults:
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0


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
    text = resources.files("owllm.schemas").joinpath("llm_backends.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


# --- YAML with line numbers and duplicate-key detection -------------------------------------


def _display(path: Path) -> str:
    """The path as a person would type it: relative when under the working directory."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _walk(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int],
          problems: list[tuple[tuple[Any, ...], str]]) -> None:
    """Record the line of every path and report duplicate keys (PyYAML keeps the last one)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                what = "model id" if path == ("models",) else "key"
                problems.append(((*path, key),
                                 f"duplicate {what} {key!r} (first defined at line {seen[key]})"))
                lines.setdefault((*path, key, "#dup"), line)
                continue
            seen[key] = line
            lines[(*path, key)] = line
            _walk(value_node, (*path, key), lines, problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            _walk(item, (*path, index), lines, problems)


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _line_for(path: tuple[Any, ...], lines: Mapping[tuple[Any, ...], int]) -> int | None:
    for end in range(len(path), 0, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def _message(error: jsonschema.ValidationError) -> tuple[tuple[Any, ...], str]:
    """Turn a jsonschema error into (path, message) phrased for a person editing YAML."""
    path = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        if extra and allowed:
            key = extra[0]
            return (*path, key), f"unknown key {key!r} (allowed: {', '.join(allowed)})"
    if error.validator == "required":
        missing = str(error.message).split("'")[1] if "'" in error.message else error.message
        return path, f"missing required key {missing!r}"
    if "propertyNames" in error.absolute_schema_path:
        return (*path, error.instance), (
            f"invalid model id {error.instance!r}: use letters, digits, '_', '.', '-' "
            "(starting with a letter or digit, at most 64 characters)"
        )
    return path, str(error.message)


def _iter_schema_errors(data: Any) -> Iterator[jsonschema.ValidationError]:
    validator = jsonschema.Draft202012Validator(config_schema())
    yield from sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, validate and freeze a config file; raise ConfigError listing every problem."""
    path = Path(path)
    shown = _display(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(shown, [f"{shown}: file not found"],
                          hint="pass --config PATH or create configs/llm_backends.yaml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(shown, [f"{shown}: cannot read: {exc}"]) from exc

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{shown}:{mark.line + 1}" if mark is not None else shown
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(shown, [f"{where}: invalid YAML: {problem}"]) from exc

    if node is None or data is None:
        raise ConfigError(shown, [f"{shown}:1: <top level>: file is empty; expected a mapping "
                                  "with a 'models' key"])
    if not isinstance(data, dict):
        raise ConfigError(shown, [f"{shown}:{node.start_mark.line + 1}: <top level>: expected a "
                                  f"mapping with a 'models' key, got {type(data).__name__}"])

    lines: dict[tuple[Any, ...], int] = {}
    found: list[tuple[tuple[Any, ...], str]] = []
    _walk(node, (), lines, found)
    found.extend(_message(error) for error in _iter_schema_errors(data))
    if found:
        located = []
        for err_path, message in found:
            line = lines.get((*err_path, "#dup")) or _line_for(err_path, lines)
            prefix = f"{shown}:{line}" if line else shown
            located.append((line or 0, f"{prefix}: {_dotted(err_path)}: {message}"))
        raise ConfigError(shown, [text for _, text in sorted(located, key=lambda item: item[0])])

    models = {
        model_id: _model(model_id, entry or {}, lines.get(("models", model_id)))
        for model_id, entry in data["models"].items()
    }
    tools = tuple(ToolEntry(**t) for t in data.get("tools", []))
    server = ToolServerSettings(**data.get("tool_server", {}))
    return Config(path=path.resolve(), models=MappingProxyType(models), tools=tools,
                  tool_server=server)


def _model(model_id: str, entry: Mapping[str, Any], line: int | None) -> ModelConfig:
    values = dict(entry)
    values["generation"] = GenerationDefaults(**values.get("generation", {}))
    values["requirements"] = tuple(values.get("requirements", ()))
    values["server_args"] = tuple(values.get("server_args", ()))
    return ModelConfig(model_id=model_id, line=line, **values)

"""Tool specs: the envelope schema's limits, normalising OpenAI/bare specs, and compiled,
cached validators.

A parameters schema is compiled once per distinct schema (keyed by its ``repr``) into a Draft
2020-12 validator with format checking; a list of specs is compiled once into a
:class:`ToolSet`.  The caches are bounded LRUs guarded by a lock (the tool server is threaded).
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from owllm.tools.errors import ToolSpecError


def load_envelope_schema() -> dict[str, Any]:
    """The call envelope's JSON schema (``owllm/tools/schema.json``, shipped as package data)."""
    text = resources.files("owllm.tools").joinpath("schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


ENVELOPE_SCHEMA = load_envelope_schema()
_PROPS = ENVELOPE_SCHEMA["properties"]
FIELDS: tuple[str, ...] = tuple(ENVELOPE_SCHEMA["required"])
TOOL_NAME_MAX = int(_PROPS["tool"]["maxLength"])
ID_MAX = int(_PROPS["id"]["maxLength"])
# fullmatch, not the schema's ^…$: Python's ``$`` also matches before a final newline, ECMA's not.
TOOL_NAME_RE = re.compile(_PROPS["tool"]["pattern"].lstrip("^").rstrip("$"))

# -- tool specs and validators ----------------------------------------------------------------

_CACHE_LOCK = threading.Lock()
_VALIDATORS: OrderedDict[str, Draft202012Validator] = OrderedDict()
_TOOLSETS: OrderedDict[str, ToolSet] = OrderedDict()
_CACHE_SIZE = 256


def _cached(cache: OrderedDict[str, Any], key: str, build: Any) -> Any:
    with _CACHE_LOCK:
        hit = cache.get(key)
        if hit is not None:
            cache.move_to_end(key)
            return hit
    value = build()
    with _CACHE_LOCK:
        cache[key] = value
        if len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
    return value


def compile_validator(parameters: Mapping[str, Any]) -> Draft202012Validator:
    """A (cached) Draft 2020-12 validator with format checking for a parameters schema."""
    def build() -> Draft202012Validator:
        try:
            Draft202012Validator.check_schema(parameters)
        except SchemaError as exc:
            raise ToolSpecError(f"invalid parameters schema: {exc.message}",
                                hint="parameters must be a valid JSON Schema 2020-12") from exc
        return Draft202012Validator(parameters,
                                    format_checker=Draft202012Validator.FORMAT_CHECKER)
    validator: Draft202012Validator = _cached(_VALIDATORS, repr(parameters), build)
    return validator


def normalize_spec(spec: Any) -> dict[str, Any]:
    """An OpenAI-style spec ``{"type": "function", "function": {...}}`` from that form, the
    bare ``{"name", "description", "parameters"}`` form, or anything with a ``spec()`` method
    (a registered :class:`~owllm.tools.registry.Tool`)."""
    if hasattr(spec, "spec") and callable(spec.spec):
        spec = spec.spec()
    if not isinstance(spec, Mapping):
        raise ToolSpecError(f"a tool spec must be a mapping, got {type(spec).__name__}")
    function = spec.get("function", spec) if spec.get("type", "function") == "function" else None
    if not isinstance(function, Mapping):
        raise ToolSpecError(f"unsupported tool spec: {json.dumps(spec, default=str)[:120]}",
                            hint='use {"type": "function", "function": {"name", "parameters"}}')
    name = function.get("name")
    if not isinstance(name, str) or len(name) > TOOL_NAME_MAX or not TOOL_NAME_RE.fullmatch(name):
        raise ToolSpecError(f"invalid tool name {name!r}",
                            hint=f"a letter, then letters/digits/_ (≤ {TOOL_NAME_MAX} chars)")
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, Mapping):
        raise ToolSpecError(f"tool {name!r}: parameters must be a JSON schema object")
    out = {"name": name, "description": str(function.get("description", "")),
           "parameters": dict(parameters)}
    return {"type": "function", "function": out}


@dataclass(frozen=True)
class ToolSet:
    """Compiled tool specs: name → (spec, validator).  Build with :func:`compile_tools`."""

    specs: tuple[dict[str, Any], ...]
    validators: Mapping[str, Draft202012Validator] = field(repr=False)

    @property
    def names(self) -> list[str]:
        """The tool names, in spec order."""
        return [s["function"]["name"] for s in self.specs]


def compile_tools(tools: Iterable[Any]) -> ToolSet:
    """Compile tool specs (OpenAI or bare form, or Tools) once; raises :class:`ToolSpecError`."""
    specs = tuple(normalize_spec(s) for s in tools)
    validators: dict[str, Draft202012Validator] = {}
    for spec in specs:
        name = spec["function"]["name"]
        if name in validators:
            raise ToolSpecError(f"tool {name!r} is defined twice")
        validators[name] = compile_validator(spec["function"]["parameters"])
    return ToolSet(specs, validators)



"""Tool specs: the envelope schema's limits, normalising OpenAI/bare specs, and compiled,
cached validators.

A parameters schema is compiled once per distinct schema (keyed by its canonical JSON) into a
Draft 2020-12 validator with format checking; a list of specs is compiled once into a
:class:`ToolSet` (keyed by the canonical JSON of its normalised specs).  The caches are bounded
LRUs guarded by a lock (the tool server is threaded).  :func:`toolset_for` is what
``parse_tool_call(text, tools=[...])`` uses: the same list object passed again, unchanged, is
recognised by identity plus an exact comparison with a snapshot (about 1 µs, against ~11 µs
for serialising the specs), so the default API runs as fast as a pre-compiled ToolSet.
"""

from __future__ import annotations

import copy
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


def canonical_key(value: Any) -> str:
    """Canonical JSON of a schema or spec list: equal content, equal key, whatever the key
    order; ``true`` and ``1`` differ (JSON Schema tells them apart).  A value JSON cannot hold
    falls back to its ``repr``, which still changes when the content does."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          default=repr)
    except (TypeError, ValueError, RecursionError):  # mixed key types, cycles, deep nesting
        return "repr:" + repr(value)


def compile_validator(parameters: Mapping[str, Any]) -> Draft202012Validator:
    """A (cached) Draft 2020-12 validator with format checking for a parameters schema."""
    def build() -> Draft202012Validator:
        # A private copy: the caller mutating its dict later must not change a cached validator.
        schema = copy.deepcopy(dict(parameters))
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise ToolSpecError(f"invalid parameters schema: {exc.message}",
                                hint="parameters must be a valid JSON Schema 2020-12") from exc
        return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    validator: Draft202012Validator = _cached(_VALIDATORS, canonical_key(parameters), build)
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
    # Deep copies: a ToolSet is cached and shared, the caller's dicts stay the caller's.
    specs = tuple(copy.deepcopy(normalize_spec(s)) for s in tools)
    validators: dict[str, Draft202012Validator] = {}
    for spec in specs:
        name = spec["function"]["name"]
        if name in validators:
            raise ToolSpecError(f"tool {name!r} is defined twice")
        validators[name] = compile_validator(spec["function"]["parameters"])
    return ToolSet(specs, validators)




# -- the default path: a list of specs passed per call ------------------------------------------

class _Exact:
    """A number or bool in a snapshot that equals only a value of the same type: plain ``==``
    says ``True == 1 == 1.0``, and JSON Schema's ``const``/``enum`` tell ``true`` from ``1``."""

    __slots__ = ("value",)
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self.value) and other == self.value


class _NoSnapshot(Exception):
    """The value holds something the snapshot cannot compare exactly (a Tool object...)."""


def _snapshot(value: Any) -> Any:
    kind = type(value)
    if kind is str or value is None:
        return value
    if kind is dict:
        return {k: _snapshot(v) for k, v in value.items()}
    if kind is list:
        return [_snapshot(v) for v in value]
    if kind is tuple:
        return tuple(_snapshot(v) for v in value)
    if kind is bool:
        return _Exact(value)
    if kind is int or kind is float:
        # Only 0 and 1 equal a bool; 7 == 7.0 is the same number to JSON Schema, so other
        # numbers stay plain and compare at C speed.
        return _Exact(value) if value == 0 or value == 1 else value
    raise _NoSnapshot


_BY_IDENTITY: OrderedDict[int, tuple[Any, Any, ToolSet]] = OrderedDict()
_IDENTITY_SIZE = 64


def toolset_for(tools: Iterable[Any]) -> ToolSet:
    """The compiled :class:`ToolSet` for a list of specs, from the caches when the content was
    seen before.  A list or tuple of plain dicts is also remembered by identity with a snapshot
    of its content: passed again unchanged it costs one C-level comparison; changed in place,
    the comparison fails and the specs are compiled (or found) by their canonical JSON."""
    if type(tools) in (list, tuple):
        # No lock for the read: one C-level get is atomic under the GIL, and a stale miss
        # only costs a lookup by canonical JSON.
        entry = _BY_IDENTITY.get(id(tools))
        # The entry holds the object itself, so its id cannot be reused while remembered.
        # Snapshot on the left: _Exact.__eq__ runs directly, not after int.__eq__ declines.
        if entry is not None and entry[0] is tools and entry[1] == tools:
            return entry[2]
    items = list(tools)
    specs = tuple(normalize_spec(s) for s in items)
    found: ToolSet = _cached(_TOOLSETS, canonical_key(specs), lambda: compile_tools(specs))
    if type(tools) in (list, tuple):
        try:
            snapshot = _snapshot(tools)
        except (_NoSnapshot, RecursionError):
            return found  # Tool objects, odd types: the canonical-JSON path each call
        with _CACHE_LOCK:
            _BY_IDENTITY[id(tools)] = (tools, snapshot, found)
            _BY_IDENTITY.move_to_end(id(tools))
            if len(_BY_IDENTITY) > _IDENTITY_SIZE:
                _BY_IDENTITY.popitem(last=False)
    return found

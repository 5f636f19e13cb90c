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
from collections.abc import Callable, Iterable, Mapping
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
    # name -> a check that answers True only for args its validator accepts (see
    # quick_check); a tool whose schema it cannot judge exactly has none
    quick: Mapping[str, Callable[[Any], bool]] = field(default_factory=dict, repr=False,
                                                       compare=False)

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
    quick = {name: check for name in validators
             if (check := quick_check(validators[name].schema)) is not None}
    return ToolSet(specs, validators, quick)


# -- a quick exact check for the common, simple parameter schemas ------------------------------

class _Unsupported(Exception):
    """The schema uses a keyword or form ``quick_check`` does not judge."""


_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$comment",
                          "deprecated", "readOnly", "writeOnly", "$schema"})
_MAX_QUICK_DEPTH = 8


def quick_check(schema: Any) -> Callable[[Any], bool] | None:
    """A plain-Python check of a parameters schema made of simple keywords (typed
    properties, required, additionalProperties false, string lengths, number bounds, string
    enums, arrays of those), or None for any other schema.

    It answers True only where jsonschema would find no error, and False where it is not
    sure: the caller then runs the real validator, which produces the error (so errors stay
    jsonschema's, word for word).  A valid call skips jsonschema's per-keyword dispatch,
    most of a call's cost (issue #18: the default ``parse_tool_call`` >= 5x a cached
    jsonschema validator)."""
    try:
        return _quick(schema, 0)
    except (_Unsupported, RecursionError):
        return None


def _number(value: Any) -> bool:
    return type(value) is int or type(value) is float


def _quick(schema: Any, depth: int) -> Callable[[Any], bool]:
    """Over 60 lines on purpose: one branch per supported type, each naming exactly the
    keywords it judges (anything else is _Unsupported)."""
    if depth > _MAX_QUICK_DEPTH or not isinstance(schema, dict):
        raise _Unsupported
    keys = set(schema) - _ANNOTATIONS
    kind = schema.get("type")
    if not keys:
        return lambda value: True
    if "enum" in schema:
        values = schema["enum"]
        if keys - {"enum", "type"} or kind not in (None, "string") or \
                type(values) is not list or not all(type(v) is str for v in values):
            raise _Unsupported
        allowed = frozenset(values)
        return lambda value: type(value) is str and value in allowed
    if kind == "string":
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        if keys - {"type", "minLength", "maxLength"} or type(low) is not int or \
                (high is not None and type(high) is not int):
            raise _Unsupported
        return lambda value: type(value) is str and low <= len(value) and \
            (high is None or len(value) <= high)
    if kind in ("integer", "number"):
        names = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
        if keys - {"type", *names} or not all(_number(schema[n]) for n in names
                                              if n in schema):
            raise _Unsupported
        lo, hi = schema.get("minimum"), schema.get("maximum")
        xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        integer = kind == "integer"  # an int only; 3.0 goes to jsonschema, which decides

        def number(value: Any) -> bool:
            return (type(value) is int or (not integer and type(value) is float)) and \
                (lo is None or value >= lo) and (hi is None or value <= hi) and \
                (xlo is None or value > xlo) and (xhi is None or value < xhi)
        return number
    if kind == "boolean" and keys == {"type"}:
        return lambda value: type(value) is bool
    if kind == "array":
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        if keys - {"type", "items", "minItems", "maxItems"} or type(low) is not int or \
                (high is not None and type(high) is not int):
            raise _Unsupported
        item = _quick(schema.get("items", {}), depth + 1)
        return lambda value: type(value) is list and low <= len(value) and \
            (high is None or len(value) <= high) and all(item(v) for v in value)
    if kind == "object":
        extra = schema.get("additionalProperties", True)
        props, required = schema.get("properties", {}), schema.get("required", [])
        if keys - {"type", "properties", "required", "additionalProperties"} or \
                type(extra) is not bool or type(props) is not dict or \
                type(required) is not list or not all(type(r) is str for r in required):
            raise _Unsupported
        checks = {name: _quick(sub, depth + 1) for name, sub in props.items()}

        def obj(value: Any) -> bool:
            if type(value) is not dict or not all(name in value for name in required):
                return False
            for name, item in value.items():
                check = checks.get(name)
                if check is None:
                    if not extra:
                        return False
                elif not check(item):
                    return False
            return True
        return obj
    raise _Unsupported




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

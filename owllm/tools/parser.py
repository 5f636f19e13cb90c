"""Strict parsing and validation of model tool calls.

A call is exactly one JSON object ``{"tool": name, "args": {...}, "id": "..."}`` (the envelope of
``schema.json``), or a non-empty JSON array of them for parallel calls; JSON whitespace around
it is allowed, nothing else: no prose, no markdown fences, no XML or ``f(x=1)`` syntax, no
NaN/Infinity, no duplicate keys.  Each call's ``args`` are then validated against its tool's
``parameters`` JSON schema (Draft 2020-12).  Every rejection is a :class:`ToolCallError` with a
stable ``code`` and the JSON ``path`` of the fault; nothing else escapes on any input text.

Validators are compiled once per distinct parameters schema and cached; a list of tool specs is
compiled once per distinct content (keyed by its canonical JSON), and the same list passed
again unchanged is recognised by identity (:func:`~owllm.tools.specs.toolset_for`), so the
default ``parse_tool_call(text, tools=[...])`` is the fast path.  A :class:`ToolSet` (from
:func:`compile_tools`) skips even that check.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from jsonschema.exceptions import ValidationError, best_match

from owllm.tools.errors import ToolCallError
from owllm.tools.specs import (
    FIELDS,
    ID_MAX,
    TOOL_NAME_MAX,
    TOOL_NAME_RE,
    ToolSet,
    toolset_for,
)

MAX_TEXT_CHARS = 1 << 20  #: longest accepted call text (characters)
MAX_DEPTH = 32  #: deepest accepted nesting of arrays/objects (the envelope counts as 1)
MAX_CALLS = 64  #: most calls in one parallel array
MAX_NUMBER_CHARS = 256  #: longest accepted number literal (bounds int parsing cost)


ToolsArg = ToolSet | Iterable[Any] | None


@dataclass(frozen=True)
class ToolCall:
    """One validated call: ``tool`` names a known tool, ``args`` passed its schema."""

    tool: str
    args: dict[str, Any]
    id: str

    def to_dict(self) -> dict[str, Any]:
        """The call as its JSON envelope."""
        return {"tool": self.tool, "args": self.args, "id": self.id}


# -- paths ------------------------------------------------------------------------------------

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def join_path(base: str, key: str | int) -> str:
    """``$`` + ``args`` → ``$.args``; ints become ``[i]``; odd keys ``["a b"]``."""
    if isinstance(key, int):
        return f"{base}[{key}]"
    if _IDENT.fullmatch(key):
        return f"{base}.{key}"
    return f"{base}[{json.dumps(key)}]"


# -- strict JSON ------------------------------------------------------------------------------

class _Reject(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Duplicate(Exception):
    pass


class _MarkedDict(dict):
    """An object that repeated a key (only built on the slow path that locates it)."""

    duplicate: str = ""


def _strict_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _Duplicate
    return result


def _marking_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        marked = _MarkedDict(result)
        for key, _ in pairs:
            if key in seen:
                marked.duplicate = key
                break
            seen.add(key)
        return marked
    return result


def _parse_constant(name: str) -> Any:
    raise _Reject("invalid_json", f"{name} is not valid JSON (RFC 8259 has no NaN/Infinity)")


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Reject("too_large", f"number literal longer than {MAX_NUMBER_CHARS} characters")
    value = float(text)
    if not math.isfinite(value):
        raise _Reject("invalid_json", f"number {text[:40]} is out of the float range")
    return value


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Reject("too_large", f"number literal longer than {MAX_NUMBER_CHARS} characters")
    return int(text)


_common = {"parse_constant": _parse_constant, "parse_float": _parse_float,
           "parse_int": _parse_int, "strict": True}
_STRICT = json.JSONDecoder(object_pairs_hook=_strict_pairs, **_common)  # type: ignore[arg-type]
_MARKING = json.JSONDecoder(object_pairs_hook=_marking_pairs, **_common)  # type: ignore[arg-type]
_PY_CALL = re.compile(r"\s*[A-Za-z_][\w.]*\s*\(")


def _decode_hint(text: str) -> str:
    head = text.lstrip()
    if head.startswith("```"):
        return "drop the markdown fence: emit the bare JSON object"
    if head.startswith("<"):
        return "XML/tags are not accepted: emit the JSON envelope"
    if _PY_CALL.match(head):
        return 'function-call syntax is not accepted: emit {"tool": …, "args": {…}, "id": …}'
    if head[:1] not in ("{", "["):
        return "no prose before the call: the output must start with '{'"
    return "emit exactly one JSON object and nothing after it"


def _check_tree(data: Any, max_depth: int) -> None:
    """Iteratively find the first too-deep container or repeated key (pre-order)."""
    stack: list[tuple[Any, int, str]] = [(data, 1, "$")]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, dict):
            if isinstance(value, _MarkedDict):
                raise ToolCallError("duplicate_key", join_path(path, value.duplicate),
                                    f"key {value.duplicate!r} appears more than once",
                                    hint="JSON objects must not repeat keys")
            children: list[tuple[str | int, Any]] = list(value.items())
        elif isinstance(value, list):
            children = list(enumerate(value))
        else:
            continue
        if depth > max_depth:
            raise ToolCallError("too_deep", path, f"JSON nests deeper than {max_depth} levels")
        for key, child in reversed(children):
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1, join_path(path, key)))


def loads_strict(text: str | bytes, *, max_size: int = MAX_TEXT_CHARS,
                 max_depth: int = MAX_DEPTH) -> Any:
    """Parse strict JSON (no NaN, no duplicate keys, bounded size/depth) or raise
    :class:`ToolCallError` (``invalid_json``, ``too_large``, ``too_deep``, ``duplicate_key``)."""
    if isinstance(text, (bytes, bytearray)):
        if len(text) > max_size:
            raise ToolCallError("too_large", "$", f"text is over {max_size} bytes")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ToolCallError("invalid_json", "$", f"text is not UTF-8: {exc.reason}") from exc
    if not isinstance(text, str):
        raise ToolCallError("invalid_json", "$", f"expected text, got {type(text).__name__}")
    if len(text) > max_size:
        raise ToolCallError("too_large", "$", f"text is {len(text)} characters, over {max_size}",
                            hint="tool calls must be small; pass data by reference")
    try:
        try:
            data = _STRICT.decode(text)
            marked = False
        except _Duplicate:
            data = _MARKING.decode(text)
            marked = True
    except _Reject as exc:
        raise ToolCallError(exc.code, "$", exc.message) from None
    except RecursionError:
        raise ToolCallError("too_deep", "$", f"JSON nests deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise ToolCallError("invalid_json", "$", f"not strict JSON: {exc.msg} at "
                            f"line {exc.lineno} column {exc.colno}",
                            hint=_decode_hint(text)) from None
    except (ValueError, TypeError, OverflowError, MemoryError) as exc:
        raise ToolCallError("invalid_json", "$", f"not strict JSON: {exc}") from None
    if marked or text.count("{") + text.count("[") > max_depth:
        _check_tree(data, max_depth)
    return data


def _toolset(tools: ToolsArg) -> ToolSet:
    if type(tools) is list or type(tools) is tuple:  # the default path first: no hasattr miss
        return toolset_for(tools)
    if isinstance(tools, ToolSet):
        return tools
    if tools is None:
        from owllm.tools.registry import default_registry

        return default_registry().toolset()
    if hasattr(tools, "toolset"):
        result: ToolSet = tools.toolset()
        return result
    return toolset_for(tools)


# -- validation -------------------------------------------------------------------------------

def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _args_error(error: ValidationError, base: str) -> ToolCallError:
    path = base
    for key in error.absolute_path:
        path = join_path(path, key)
    kind, instance, schema = error.validator, error.instance, error.schema
    if kind == "required" and isinstance(instance, dict):
        missing = next((k for k in error.validator_value if k not in instance), "?")
        return ToolCallError("missing_required", join_path(path, missing),
                             f"missing required parameter {missing!r}")
    if kind in ("additionalProperties", "unevaluatedProperties") and isinstance(instance, dict):
        props = schema.get("properties", {}) if isinstance(schema, dict) else {}
        patterns = schema.get("patternProperties", {}) if isinstance(schema, dict) else {}
        extras = [k for k in instance
                  if k not in props and not any(re.search(p, k) for p in patterns)]
        extra = extras[0] if extras else "?"
        allowed = ", ".join(sorted(props)) or "none"
        return ToolCallError("unexpected_param", join_path(path, extra),
                             f"unexpected parameter {extra!r} (allowed: {allowed})")
    if kind == "type":
        return ToolCallError("type_error", path, f"expected {error.validator_value}, "
                             f"got {_json_type(instance)}")
    message = error.message if len(error.message) <= 300 else error.message[:297] + "..."
    return ToolCallError("constraint", path, message)


def _validate_one(item: Any, base: str, toolset: ToolSet) -> ToolCall:
    if not isinstance(item, dict):
        raise ToolCallError("not_an_object", base, f"a call must be a JSON object, got "
                            f"{_json_type(item)}", hint='{"tool": …, "args": {…}, "id": …}')
    if len(item) != 3 or "tool" not in item or "args" not in item or "id" not in item:
        for key in item:
            if key not in FIELDS:
                raise ToolCallError("unexpected_field", join_path(base, key),
                                    f"unexpected field {key!r}; the envelope has exactly "
                                    "tool, args, id")
        for key in FIELDS:
            if key not in item:
                raise ToolCallError("missing_field", join_path(base, key),
                                    f"missing field {key!r}")
    name, args, call_id = item["tool"], item["args"], item["id"]
    if (not isinstance(name, str) or len(name) > TOOL_NAME_MAX
            or not TOOL_NAME_RE.fullmatch(name)):
        raise ToolCallError("bad_tool_name", join_path(base, "tool"),
                            f"tool must be a name matching ^[A-Za-z][A-Za-z0-9_]*$ "
                            f"(≤ {TOOL_NAME_MAX} chars), got {json.dumps(name)[:80]}")
    if not isinstance(call_id, str) or not call_id or len(call_id) > ID_MAX:
        raise ToolCallError("bad_id", join_path(base, "id"),
                            f"id must be a non-empty string of ≤ {ID_MAX} characters, got "
                            f"{json.dumps(call_id)[:80]}")
    if not isinstance(args, dict):
        raise ToolCallError("type_error", join_path(base, "args"),
                            f"args must be an object, got {_json_type(args)}")
    validator = toolset.validators.get(name)
    if validator is None:
        known = ", ".join(toolset.names) or "none"
        raise ToolCallError("unknown_tool", join_path(base, "tool"),
                            f"unknown tool {name!r} (known: {known})")
    quick = toolset.quick.get(name)
    if quick is not None and quick(args):  # valid for sure; else jsonschema says what is wrong
        return ToolCall(name, args, call_id)
    try:
        errors = list(validator.iter_errors(args))
        best = best_match(errors) if errors else None
        failure = _args_error(best, join_path(base, "args")) if best is not None else None
    except Exception as exc:
        # A user schema plus hostile args can make jsonschema itself fail (deep recursion,
        # huge numbers in multipleOf, a format checker bug): still only a ToolCallError.
        raise ToolCallError("constraint", join_path(base, "args"),
                            f"args could not be validated: {type(exc).__name__}") from None
    if failure is not None:
        raise failure
    return ToolCall(name, args, call_id)


def validate_tool_call(data: Any, tools: ToolsArg = None, *, max_depth: int = MAX_DEPTH,
                       max_calls: int = MAX_CALLS) -> ToolCall | list[ToolCall]:
    """Validate already-decoded JSON (a dict, or a list of dicts) like
    :func:`parse_tool_call` does after decoding; raises :class:`ToolCallError`."""
    _check_tree(data, max_depth)
    return _validate(data, _toolset(tools), max_calls)


def _validate(data: Any, toolset: ToolSet, max_calls: int) -> ToolCall | list[ToolCall]:
    if isinstance(data, list):
        if not data:
            raise ToolCallError("not_an_object", "$", "an empty array holds no call")
        if len(data) > max_calls:
            raise ToolCallError("too_large", "$", f"{len(data)} calls, over {max_calls}")
        calls: list[ToolCall] = []
        seen: set[str] = set()
        for index, item in enumerate(data):
            call = _validate_one(item, f"$[{index}]", toolset)
            if call.id in seen:
                raise ToolCallError("duplicate_id", f"$[{index}].id",
                                    f"id {call.id!r} is used by an earlier call",
                                    hint="parallel calls need distinct ids")
            seen.add(call.id)
            calls.append(call)
        return calls
    return _validate_one(data, "$", toolset)


def parse_tool_call(text: str | bytes, tools: ToolsArg = None, *,
                    max_size: int = MAX_TEXT_CHARS, max_depth: int = MAX_DEPTH,
                    max_calls: int = MAX_CALLS) -> ToolCall | list[ToolCall]:
    """Parse and validate a model's tool-call text.

    ``tools``: OpenAI-style specs (or the bare ``{"name", "parameters"}`` form, or a compiled
    :class:`ToolSet`, or a :class:`~owllm.tools.registry.ToolRegistry`); default: the default
    registry (built-ins plus what was registered).  Returns a :class:`ToolCall`, or a list of
    them when the text is a JSON array.  Raises :class:`ToolCallError` and nothing else for
    any text (a bad ``tools`` argument raises :class:`ToolSpecError`).
    """
    toolset = _toolset(tools)
    data = loads_strict(text, max_size=max_size, max_depth=max_depth)
    return _validate(data, toolset, max_calls)

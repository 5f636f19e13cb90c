"""Load a YAML file, validate it against a JSON Schema and report every problem as
``<file>:<line>: <dotted.path>: <message>`` (the style of :mod:`owllm.config`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from owllm.errors import ConfigError

Key = tuple[Any, ...]


def display(path: Path) -> str:
    """The path as a person would type it: relative when under the working directory."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _walk(node: yaml.Node, path: Key, lines: dict[Key, int],
          problems: list[tuple[Key, str]]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.append(((*path, key, "#dup"), f"duplicate key {key!r} "
                                                f"(first defined at line {seen[key]})"))
                lines.setdefault((*path, key, "#dup"), line)
                continue
            seen[key] = line
            lines[(*path, key)] = line
            _walk(value_node, (*path, key), lines, problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            _walk(item, (*path, index), lines, problems)


def dotted(path: Key) -> str:
    out = ""
    for part in (p for p in path if p != "#dup"):
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _line_for(path: Key, lines: Mapping[Key, int]) -> int | None:
    for end in range(len(path), 0, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def _message(error: jsonschema.ValidationError) -> tuple[Key, str]:
    path = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        if extra and allowed:
            return (*path, extra[0]), f"unknown key {extra[0]!r} (allowed: {', '.join(allowed)})"
    if error.validator == "required" and "'" in error.message:
        return path, f"missing required key {error.message.split(chr(39))[1]!r}"
    return path, str(error.message)


def load_validated(path: Path, schema: Mapping[str, Any], what: str, hint: str) -> dict[str, Any]:
    """Read ``path``, check it against ``schema``; raise ConfigError listing every problem."""
    shown = display(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(shown, [f"{shown}: cannot read: {exc}"], hint=hint) from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{shown}:{mark.line + 1}" if mark is not None else shown
        raise ConfigError(shown, [f"{where}: invalid YAML: "
                                  f"{getattr(exc, 'problem', None) or exc}"], hint=hint) from exc
    if node is None or not isinstance(data, dict):
        got = "nothing" if data is None else type(data).__name__
        raise ConfigError(shown, [f"{shown}:1: <top level>: expected a mapping ({what}), "
                                  f"got {got}"], hint=hint)
    lines: dict[Key, int] = {}
    found: list[tuple[Key, str]] = []
    _walk(node, (), lines, found)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    found.extend(_message(e) for e in errors)
    if found:
        located = []
        for err_path, message in found:
            line = _line_for(err_path, lines)
            prefix = f"{shown}:{line}" if line else shown
            located.append((line or 0, f"{prefix}: {dotted(err_path)}: {message}"))
        raise ConfigError(shown, [t for _, t in sorted(located, key=lambda i: i[0])], hint=hint)
    return data

"""Load a YAML file, validate it against a JSON Schema and report every problem at once as
``<file>:<line>: <dotted.path>: <message>``.  Used by every YAML file OWLLM reads
(``llm_backends.yaml``, ``envs.yaml``).  Duplicate keys, which PyYAML silently collapses, are
errors too."""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
          problems: list[tuple[Key, str]], label: Callable[[Key], str]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.append(((*path, key, "#dup"), f"duplicate {label(path)} {key!r} "
                                                f"(first defined at line {seen[key]})"))
                lines.setdefault((*path, key, "#dup"), line)
                continue
            seen[key] = line
            lines[(*path, key)] = line
            _walk(value_node, (*path, key), lines, problems, label)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            _walk(item, (*path, index), lines, problems, label)


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


def schema_message(error: jsonschema.ValidationError) -> tuple[Key, str]:
    """(path, message) of a schema error, phrased for a person editing YAML."""
    path = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        if extra and allowed:
            return (*path, extra[0]), f"unknown key {extra[0]!r} (allowed: {', '.join(allowed)})"
    if error.validator == "required" and "'" in error.message:
        return path, f"missing required key {error.message.split(chr(39))[1]!r}"
    return path, str(error.message)


MessageFn = Callable[[jsonschema.ValidationError], tuple[Key, str]]


def load_validated(path: Path, schema: Mapping[str, Any], what: str, hint: str | None = None,
                   message: MessageFn = schema_message,
                   duplicate_label: Callable[[Key], str] = lambda path: "key",
                   lines: dict[Key, int] | None = None) -> dict[str, Any]:
    """Read ``path``, check it against ``schema``; raise ConfigError listing every problem.

    ``what`` completes "expected a mapping …"; ``message`` phrases schema errors;
    ``duplicate_label`` names what a duplicated key is at a path ("key", "model id");
    ``lines``, when given, is filled with the line of every path (for later messages).
    """
    shown = display(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(shown, [f"{shown}: file not found"], hint=hint) from None
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
    if node is None or data is None:
        raise ConfigError(shown, [f"{shown}:1: <top level>: file is empty; expected a mapping "
                                  f"{what}"], hint=hint)
    if not isinstance(data, dict):
        raise ConfigError(shown, [f"{shown}:{node.start_mark.line + 1}: <top level>: expected "
                                  f"a mapping {what}, got {type(data).__name__}"], hint=hint)
    lines = {} if lines is None else lines
    found: list[tuple[Key, str]] = []
    _walk(node, (), lines, found, duplicate_label)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    found.extend(message(e) for e in errors)
    if found:
        located = []
        for err_path, text in found:
            line = _line_for(err_path, lines)
            prefix = f"{shown}:{line}" if line else shown
            located.append((line or 0, f"{prefix}: {dotted(err_path)}: {text}"))
        raise ConfigError(shown, [t for _, t in sorted(located, key=lambda i: i[0])], hint=hint)
    return data

"""Load a YAML file, validate it against a JSON Schema and report every problem at once as
``<file>:<line>: <dotted.path>: <message>``.  Used by every YAML file OWLLM reads
(``llm_backends.yaml``, ``envs.yaml``, tools files).  Duplicate keys, which PyYAML silently
collapses, are errors too, and so are keys YAML reads as something other than a string
(``123:``, ``.inf:``, ``yes:``, ``null:``) and numbers JSON cannot hold (``.inf``, ``.nan``).

A config file is input a person may have copied from anywhere, so reading it is bounded
(issue 13).  The limits, also listed in the README (Configuration):

* :data:`MAX_FILE_BYTES`: the file's size; only regular files are read (``/dev/zero`` is not
  a config);
* :data:`MAX_DEPTH`: how deeply lists and mappings nest (PyYAML's composer recurses per
  level, so a 5000-deep file used to end in a ``RecursionError``);
* :data:`MAX_VALUES` and :data:`MAX_TEXT_CHARS`: the values and the characters of text the
  document holds *with every alias expanded*.  A billion-laughs file (ten aliases per level,
  587 bytes) is refused at the alias that crosses the limit, before anything expands it: the
  schema check and every later reader walk the expanded data, so this bounds them too;
* an alias inside its own anchor (``&r [*r]``, a recursive document) is refused where it
  appears.

The file is parsed once; the node graph is walked once, each node visited a single time
(an alias is not walked again, its lines are those of its anchor).
"""

from __future__ import annotations

import math
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from owllm.errors import ConfigError

Key = tuple[Any, ...]

MAX_FILE_BYTES = 1 << 20  #: largest config file read (1 MiB)
MAX_DEPTH = 64  #: deepest nesting of lists and mappings
MAX_VALUES = 100_000  #: most values (scalars, lists, mappings) once aliases are expanded
MAX_TEXT_CHARS = 4 << 20  #: most characters of text once aliases are expanded (4 Mi)
LIMITS_HINT = ("a config file is at most 1 MiB, nests at most 64 levels and holds at most "
               "100000 values and 4 Mi characters of text with its aliases expanded "
               "(README: Configuration, limits)")

_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_FLOAT = "tag:yaml.org,2002:float"
_KINDS = {"int": "an integer", "float": "a number", "bool": "a boolean", "null": "null",
          "timestamp": "a date", "binary": "binary data"}


def display(path: Path) -> str:
    """The path as a person would type it: relative when under the working directory."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class _Refused(yaml.MarkedYAMLError):
    """A document past one of the limits; carries the mark of the node that crossed it."""

    def __init__(self, mark: Any, message: str) -> None:
        super().__init__(problem=message, problem_mark=mark)


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts while it composes: depth, values and text with aliases
    expanded (an alias adds what its anchor holds), and refuses an alias to an anchor that
    is still open.  Only composition is bounded here; construction then reuses one object
    per anchor, so it stays linear in the file."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._values = 0
        self._chars = 0
        self._open: set[str] = set()
        self._weights: dict[str, tuple[int, int]] = {}

    def _grow(self, values: int, chars: int, mark: Any, what: str) -> None:
        self._values += values
        self._chars += chars
        if self._values > MAX_VALUES:
            raise _Refused(mark, f"{what} takes the document past {MAX_VALUES} values with "
                                 "its aliases expanded (a YAML alias bomb?)")
        if self._chars > MAX_TEXT_CHARS:
            raise _Refused(mark, f"{what} takes the document past {MAX_TEXT_CHARS} characters "
                                 "of text with its aliases expanded (a YAML alias bomb?)")

    def compose_node(self, parent: yaml.Node | None, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            alias = str(event.anchor)
            if alias in self._open:
                raise _Refused(event.start_mark, f"alias *{alias} is inside its own anchor "
                                                 f"&{alias}: a recursive document")
            node = super().compose_node(parent, index)  # undefined: ComposerError
            values, chars = self._weights.get(alias, (1, 0))
            self._grow(values, chars, event.start_mark, f"alias *{alias}")
            return node
        if self._depth >= MAX_DEPTH:
            raise _Refused(event.start_mark, f"nested deeper than {MAX_DEPTH} levels")
        before = (self._values, self._chars)
        text = str(event.value) if isinstance(event, yaml.ScalarEvent) else ""
        self._grow(1, len(text), event.start_mark, "this value")
        anchor: str | None = getattr(event, "anchor", None)
        if anchor is not None:
            self._open.add(anchor)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open.discard(anchor)
        if anchor is not None:
            self._weights[anchor] = (self._values - before[0], self._chars - before[1])
        return node


def read_config_text(path: Path, hint: str | None = None) -> str:
    """The text of a config file: a regular file of at most :data:`MAX_FILE_BYTES`, UTF-8;
    ConfigError otherwise."""
    shown = display(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(shown, [f"{shown}: not a regular file"], hint=hint)
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)  # never more, whatever stat said
    except FileNotFoundError:
        raise ConfigError(shown, [f"{shown}: file not found"], hint=hint) from None
    except OSError as exc:
        raise ConfigError(shown, [f"{shown}: cannot read: {exc}"], hint=hint) from exc
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(shown, [f"{shown}: larger than {MAX_FILE_BYTES} bytes, the most a "
                                  "config file may have"], hint=LIMITS_HINT)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(shown, [f"{shown}: cannot read: {exc}"], hint=hint) from exc


def _walk(root: yaml.Node, lines: dict[Key, int], problems: list[tuple[Key, str]],
          label: Callable[[Key], str], loader: _BoundedLoader) -> None:
    """Record the line of every path, and report duplicate keys, keys that are not strings
    and non-finite numbers.  Iterative, and each node is visited once: a node reached again
    through an alias is not walked again (its paths keep the lines of its anchor)."""
    visited: set[int] = set()
    stack: list[tuple[yaml.Node, Key]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        children: list[tuple[yaml.Node, Key]] = []
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _MERGE:
                    children.append((value_node, path))  # ``<<: *base`` adds base's keys here
                    continue
                if not isinstance(key_node, yaml.ScalarNode):
                    where = (*path, "#key")
                    shape = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
                    lines.setdefault(where, line)
                    problems.append((where, f"a {label(path)} must be a plain name, not a "
                                            f"{shape}"))
                    continue
                key = key_node.value
                if key_node.tag != _STR:
                    kind = key_node.tag.rsplit(":", 1)[-1]
                    lines.setdefault((*path, key), line)
                    problems.append(((*path, key), f"{label(path)} {key!r} is read by YAML as "
                                     f"{_KINDS.get(kind, kind)}, not a string: quote it "
                                     f"('{key}') if it is meant as a name"))
                if key in seen:
                    problems.append(((*path, key, "#dup"), f"duplicate {label(path)} {key!r} "
                                                    f"(first defined at line {seen[key]})"))
                    lines.setdefault((*path, key, "#dup"), line)
                    continue
                seen[key] = line
                lines[(*path, key)] = line
                children.append((value_node, (*path, key)))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[(*path, index)] = item.start_mark.line + 1
                children.append((item, (*path, index)))
        elif (isinstance(node, yaml.ScalarNode) and node.tag == _FLOAT
              and not math.isfinite(loader.construct_yaml_float(node))):
            lines.setdefault(path, node.start_mark.line + 1)
            problems.append((path, f"{node.value} is not a finite number (JSON, and so "
                                   "OWLLM's output, cannot hold it)"))
        stack.extend(reversed(children))


def dotted(path: Key) -> str:
    out = ""
    for part in (p for p in path if p not in ("#dup", "#key")):
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
        extra = sorted(set(error.instance) - set(allowed), key=str)
        if extra and allowed:
            return (*path, extra[0]), f"unknown key {extra[0]!r} (allowed: {', '.join(allowed)})"
    if error.validator == "required" and "'" in error.message:
        return path, f"missing required key {error.message.split(chr(39))[1]!r}"
    return path, str(error.message)


MessageFn = Callable[[jsonschema.ValidationError], tuple[Key, str]]


def _located(shown: str, found: list[tuple[Key, str]], lines: Mapping[Key, int]) -> list[str]:
    located = []
    for err_path, text in found:
        line = _line_for(err_path, lines)
        prefix = f"{shown}:{line}" if line else shown
        located.append((line or 0, f"{prefix}: {dotted(err_path)}: {text}"))
    return [t for _, t in sorted(located, key=lambda i: i[0])]


def _load(path: Path, hint: str | None, label: Callable[[Key], str],
          lines: dict[Key, int]) -> tuple[Any, yaml.Node | None, list[tuple[Key, str]]]:
    """(data, root node, problems found by the walk), reading ``path`` within the limits."""
    shown = display(path)
    text = read_config_text(path, hint)
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        problems: list[tuple[Key, str]] = []
        if node is not None:
            _walk(node, lines, problems, label, loader)
        # Constructed from the same nodes (one parse): an anchor is one shared object.
        data = loader.construct_document(node) if node is not None else None
    except _Refused as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else "?"
        raise ConfigError(shown, [f"{shown}:{line}: {exc.problem}"], hint=LIMITS_HINT) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{shown}:{mark.line + 1}" if mark is not None else shown
        raise ConfigError(shown, [f"{where}: invalid YAML: "
                                  f"{getattr(exc, 'problem', None) or exc}"], hint=hint) from exc
    finally:
        loader.dispose()
    return data, node, problems


def load_yaml(path: Path, hint: str | None = None,
              duplicate_label: Callable[[Key], str] = lambda path: "key",
              lines: dict[Key, int] | None = None) -> Any:
    """Read a YAML (or JSON) file within the limits above and return its data, whatever its
    shape; ConfigError (``<file>:<line>: …``) for unreadable or invalid YAML, a limit, a
    duplicate key, a key that is not a string or a non-finite number."""
    lines = {} if lines is None else lines
    data, _, problems = _load(path, hint, duplicate_label, lines)
    if problems:
        shown = display(path)
        raise ConfigError(shown, _located(shown, problems, lines), hint=hint)
    return data


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
    lines = {} if lines is None else lines
    data, node, found = _load(path, hint, duplicate_label, lines)
    if node is None or data is None:
        raise ConfigError(shown, [f"{shown}:1: <top level>: file is empty; expected a mapping "
                                  f"{what}"], hint=hint)
    if not isinstance(data, dict):
        raise ConfigError(shown, [f"{shown}:{node.start_mark.line + 1}: <top level>: expected "
                                  f"a mapping {what}, got {type(data).__name__}"], hint=hint)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    found.extend(message(e) for e in errors)
    if found:
        raise ConfigError(shown, _located(shown, found, lines), hint=hint)
    return data

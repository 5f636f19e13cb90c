"""Tools and the registry that holds them.

A :class:`Tool` is a name, a description, a JSON schema (Draft 2020-12) for its args and a
Python callable, called with the validated args as keyword arguments; it returns
JSON-serialisable data, or raises :class:`~owllm.tools.errors.ToolError` to refuse its args.

Four ways to add tools, all ending in :meth:`ToolRegistry.register`:

* Python: ``register_tool(func, parameters={...})`` (also a decorator), or ``@tool(...)``
  which turns a function into a :class:`Tool` (still callable) for a registry to pick up.
* Configuration (YAML or JSON), see :func:`load_tools_config`::

      python_path: [.]                   # optional, relative to this file
      tools:
        - callable: mypkg.tools:lookup   # "module:attr": a callable or a Tool ("function:"
                                         # is accepted too)
          name: lookup                   # default: the function's name
          description: Find a record     # default: the docstring's first line
          parameters: {type: object, properties: {key: {type: string}}, required: [key]}
          timeout: 5                     # seconds, default: the server's

* An OWLLM config's ``tools:`` entries (:class:`owllm.config.ToolEntry`), see
  :func:`tools_from_config`.
* Entry points: a distribution declares ``[project.entry-points."owllm.tools"]``
  ``name = "pkg.mod:obj"`` where ``obj`` is a :class:`Tool` or an iterable of them.

:func:`default_registry` is the process-wide registry (built-ins, then entry points);
``parse_tool_call(text)`` without ``tools`` validates against it.

``callable:`` entries and ``python_path`` are code, trusted like a conftest: importing runs
them.  So only serving imports (:func:`load_tools_config`, :func:`tools_from_config`, what
the tool server calls); validating a file or a config reads the specs from the file alone
(:func:`load_tools_specs`, :func:`specs_from_config`: nothing imported, ``sys.path``
untouched).  Tools files are read with the same bounded loader as every config
(:mod:`owllm._yaml_lines`).
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from owllm._yaml_lines import load_yaml
from owllm.errors import ConfigError
from owllm.tools.builtins import builtin_tools
from owllm.tools.errors import ToolSpecError
from owllm.tools.specs import ToolSet, compile_tools, normalize_spec
from owllm.tools.tool import Tool, tool

if TYPE_CHECKING:
    from owllm.config import Config

ENTRY_POINT_GROUP = "owllm.tools"
log = logging.getLogger("owllm.tools")


class ToolRegistry:
    """Tools by name.  Thread-safe; :meth:`toolset` is recompiled only after a change."""

    def __init__(self, tools: Iterable[Tool] = (), *, builtins: bool = False) -> None:
        self._tools: dict[str, Tool] = {}
        self._lock = threading.Lock()
        self._toolset: ToolSet | None = None
        if builtins:
            tools = [*builtin_tools(), *tools]
        for item in tools:
            self.register(item)

    def register(self, item: Tool, *, replace: bool = False) -> Tool:
        """Add a tool; a name already taken raises :class:`ToolSpecError` unless ``replace``."""
        if not isinstance(item, Tool):
            raise ToolSpecError(f"expected a Tool, got {type(item).__name__}",
                                hint="wrap the function with owllm.tools.tool(...)")
        with self._lock:
            if item.name in self._tools and not replace:
                raise ToolSpecError(f"tool {item.name!r} is already registered",
                                    hint="pick another name or pass replace=True")
            self._tools[item.name] = item
            self._toolset = None
        return item

    def register_tool(self, func: Callable[..., Any] | None = None, *, name: str | None = None,
                      parameters: Mapping[str, Any] | None = None,
                      description: str | None = None, timeout: float | None = None,
                      replace: bool = False) -> Any:
        """Register ``func`` (or use as ``@registry.register_tool(parameters=...)``)."""
        def wrap(target: Callable[..., Any]) -> Tool:
            made = target if isinstance(target, Tool) else tool(
                name, parameters=parameters, description=description, timeout=timeout)(target)
            return self.register(made, replace=replace)
        return wrap if func is None else wrap(func)

    def unregister(self, name: str) -> None:
        """Remove a tool (no error when absent)."""
        with self._lock:
            self._tools.pop(name, None)
            self._toolset = None

    def get(self, name: str) -> Tool | None:
        """The tool of that name, or None."""
        return self._tools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._tools)

    def specs(self) -> list[dict[str, Any]]:
        """OpenAI-style specs of every tool (what ``GET /tools`` serves); a copy, so callers
        may edit them without touching the compiled ones."""
        return copy.deepcopy(list(self.toolset().specs))

    def toolset(self) -> ToolSet:
        """The compiled specs and validators (what :func:`parse_tool_call` uses)."""
        current = self._toolset
        if current is None:
            with self._lock:
                current = self._toolset = compile_tools(self._tools.values())
        return current

    def load_config(self, path: str | Path, *, replace: bool = True) -> list[Tool]:
        """Register the tools of a YAML/JSON file (see :func:`load_tools_config`)."""
        loaded = load_tools_config(path)
        for item in loaded:
            self.register(item, replace=replace)
        return loaded

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP, *,
                          strict: bool = False) -> list[Tool]:
        """Register tools published under an entry point group.  A broken entry point is
        logged and skipped, or raises :class:`ToolSpecError` when ``strict``."""
        loaded: list[Tool] = []
        for ep in entry_points(group=group):
            try:
                obj = ep.load()
                items = [obj] if isinstance(obj, Tool) else list(obj)
                for item in items:
                    loaded.append(self.register(item, replace=True))
            except Exception as exc:  # a third-party plugin may fail in any way
                message = f"entry point {ep.name} = {ep.value} ({group}): {exc}"
                if strict:
                    raise ToolSpecError(message) from exc
                log.warning("skipping tool %s", message)
        return loaded


def split_import_path(path: str) -> tuple[str, str]:
    """``"package.module:attr"`` (or ``package.module.attr``) → (module, attr), without
    importing anything."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ToolSpecError(f"bad import path {path!r}", hint='use "package.module:function"')
    return module_name, attr


def import_object(path: str) -> Any:
    """``"package.module:attr"`` (or ``package.module.attr``) → the object (imports, so runs,
    the module: trusted code only)."""
    module_name, attr = split_import_path(path)
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ToolSpecError(f"cannot import {path!r}: {exc}") from exc
    return obj


_ENTRY_KEYS = {"function", "callable", "name", "description", "parameters", "timeout"}


def _entry_target(entry: Any, where: str) -> str:
    """The checked import path of a tools entry (its shape checked, nothing imported)."""
    if not isinstance(entry, Mapping):
        raise ToolSpecError(f"{where}: expected a mapping")
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise ToolSpecError(f"{where}: unknown key(s) {sorted(unknown, key=str)}",
                            hint=f"allowed: {sorted(_ENTRY_KEYS)}")
    # ``callable`` is the key of llm_backends.yaml's ``tools:`` entries; ``function`` the
    # original one of standalone tools files.  Both mean the same.
    if "function" in entry and "callable" in entry:
        raise ToolSpecError(f"{where}: give either 'function' or 'callable', not both")
    target_path = entry.get("function", entry.get("callable"))
    if not isinstance(target_path, str):
        raise ToolSpecError(f"{where}.callable: required, as \"package.module:function\"")
    split_import_path(target_path)
    return target_path


def entry_spec(entry: Any, where: str) -> dict[str, Any]:
    """The OpenAI-style spec of a tools entry read from the entry alone: nothing is imported
    (config is not run to be validated).  The name defaults to the callable's attribute name;
    ``parameters`` must be in the entry (a ``Tool`` object's own schema is only known once
    the tool server imports it)."""
    target_path = _entry_target(entry, where)
    if "parameters" not in entry:
        raise ToolSpecError(f"{where}.parameters: required to validate without importing "
                            f"{target_path!r}",
                            hint="give the JSON schema of its arguments in the file; the "
                                 "code is imported only when the tool server serves it")
    name = entry.get("name") or split_import_path(target_path)[1].split(".")[-1]
    return normalize_spec({"name": name, "description": entry.get("description") or "",
                           "parameters": entry["parameters"]})


def _tool_from_entry(entry: Any, where: str) -> Tool:
    target = import_object(_entry_target(entry, where))
    overrides = {k: entry[k] for k in ("name", "description", "parameters", "timeout")
                 if k in entry}
    if isinstance(target, Tool):
        return replace(target, **overrides) if overrides else target
    if "parameters" not in entry:
        raise ToolSpecError(f"{where}.parameters: required for a plain function",
                            hint="give the JSON schema of the function's keyword arguments")
    return tool(entry.get("name"), parameters=entry["parameters"],
                description=entry.get("description"), timeout=entry.get("timeout"))(target)


def _read_tools_file(file: Path) -> dict[str, Any]:
    """A tools file's data as ``{"tools": [...], "python_path"?: [...]}`` (bounded loader)."""
    data = load_yaml(file)
    if isinstance(data, list):
        data = {"tools": data}
    if not isinstance(data, dict) or not isinstance(data.get("tools", []), list):
        raise ConfigError(str(file), [f"{file}: expected a mapping with a 'tools' list"])
    return data


def _each_entry(file: Path, entries: Any, make: Callable[[Any, str], Any]) -> list[Any]:
    made: list[Any] = []
    problems: list[str] = []
    for index, entry in enumerate(entries or []):
        try:
            made.append(make(entry, f"tools[{index}]"))
        except ToolSpecError as exc:
            problems.append(f"{file}: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
    if problems:
        raise ConfigError(str(file), problems)
    return made


def load_tools_config(path: str | Path) -> list[Tool]:
    """Read tools from a YAML or JSON file (format in the module docstring) and import them:
    for serving (the code runs).

    ``python_path`` entries (relative to the file) are added to ``sys.path`` first so the
    file can point at modules that live next to it.  Raises :class:`ConfigError` listing the
    problems.
    """
    file = Path(path)
    data = _read_tools_file(file)
    for extra in data.get("python_path", []) or []:
        folder = str((file.parent / str(extra)).resolve())
        if folder not in sys.path:
            sys.path.insert(0, folder)
    tools: list[Tool] = _each_entry(file, data.get("tools"), _tool_from_entry)
    return tools


def load_tools_specs(path: str | Path) -> list[dict[str, Any]]:
    """The OpenAI-style specs of a tools file, read from the file alone (:func:`entry_spec`):
    no import, no ``sys.path`` change.  What validating needs; ConfigError listing problems."""
    file = Path(path)
    specs: list[dict[str, Any]] = _each_entry(file, _read_tools_file(file).get("tools"),
                                              entry_spec)
    return specs


def specs_from_file(path: str | Path) -> ToolSet:
    """The compiled specs of any file a user may hand over as "the tools", told apart by
    shape: an OWLLM ``llm_backends.yaml`` (its ``tools:`` entries), a tools file with
    ``callable:`` import paths (:func:`load_tools_specs`), or a list (or ``{tools: [...]}``)
    of OpenAI-style or bare ``{name, parameters}`` specs.

    Nothing is imported: ``callable:`` entries are code, run only when the tool server serves
    them, so their specs are read from the file.  Raises :class:`ConfigError` when the file
    is unreadable or not a list of specs, :class:`ToolSpecError` for a bad spec.
    """
    from owllm.config import load_config  # the config layer sits below; loaded on demand

    file = Path(path)
    data = load_yaml(file)  # the bounded loader every config goes through
    entries = data.get("tools") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ConfigError(str(file), [f"{file}: expected a list of tool specs or "
                                      "{tools: [...]}"])
    if isinstance(data, dict) and "models" in data:  # an OWLLM config: its tools: entries
        return compile_tools(specs_from_config(load_config(file)))
    if any(isinstance(e, dict) and isinstance(e.get("function", e.get("callable")), str)
           for e in entries):
        return compile_tools(load_tools_specs(file))
    return compile_tools(entries)


def tools_from_config(config: Config) -> list[Tool]:
    """The tools of an OWLLM config's ``tools:`` entries (``callable: "pkg.mod:func"`` plus
    optional name/description/parameters).  The config's home folder (the one holding
    ``configs/``) goes on ``sys.path`` first so entries can name modules that live there.
    Raises :class:`ConfigError` listing every bad entry."""
    base = str(config.home_relative_base)
    if base not in sys.path:
        sys.path.insert(0, base)
    tools: list[Tool] = []
    problems: list[str] = []
    for index, entry in enumerate(config.tools):
        raw = {"callable": entry.callable, "name": entry.name,
               "description": entry.description,
               "parameters": dict(entry.parameters) if entry.parameters is not None else None}
        try:
            tools.append(_tool_from_entry({k: v for k, v in raw.items() if v is not None},
                                          f"tools[{index}]"))
        except ToolSpecError as exc:
            problems.append(f"{config.path}: {exc.message}"
                            + (f" ({exc.hint})" if exc.hint else ""))
    if problems:
        raise ConfigError(str(config.path), problems)
    return tools


def specs_from_config(config: Config) -> list[dict[str, Any]]:
    """The specs of an OWLLM config's ``tools:`` entries, read from the config alone: nothing
    is imported (compare :func:`tools_from_config`, which serves them)."""
    entries = [{k: v for k, v in {"callable": e.callable, "name": e.name,
                                  "description": e.description,
                                  "parameters": e.parameters}.items() if v is not None}
               for e in config.tools]
    specs: list[dict[str, Any]] = _each_entry(config.path, entries, entry_spec)
    return specs


_DEFAULT: ToolRegistry | None = None
_DEFAULT_LOCK = threading.Lock()


def default_registry() -> ToolRegistry:
    """The process-wide registry: built-ins, then tools from entry points (loaded once)."""
    global _DEFAULT
    if _DEFAULT is None:
        with _DEFAULT_LOCK:
            if _DEFAULT is None:
                registry = ToolRegistry(builtins=True)
                registry.load_entry_points()
                _DEFAULT = registry
    return _DEFAULT


def register_tool(func: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Register a tool on the default registry; see :meth:`ToolRegistry.register_tool`."""
    return default_registry().register_tool(func, **options)


def dumps_result(value: Any) -> str:
    """A tool result as strict JSON (raises ValueError/TypeError when it is not JSON)."""
    return json.dumps(value, allow_nan=False)

"""Tools and registries: Python API, config files, entry points, built-ins."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

import owllm.tools.registry as registry_module
from owllm.errors import ConfigError
from owllm.tools import (
    Tool,
    ToolCallError,
    ToolError,
    ToolRegistry,
    ToolSpecError,
    default_registry,
    load_tools_config,
    parse_tool_call,
    register_tool,
    tool,
)
from owllm.tools.builtins import current_time, echo

PARAMS = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
          "additionalProperties": False}


def double(n: int) -> int:
    """Twice n."""
    return 2 * n


def test_builtins() -> None:
    registry = ToolRegistry(builtins=True)
    assert registry.names() == ["calculator", "echo", "current_time"]
    assert echo("hi") == "hi"
    assert current_time().endswith("+00:00")
    assert current_time("Asia/Tokyo").endswith("+09:00")
    with pytest.raises(ToolError) as err:
        current_time("Mars/Olympus")
    assert err.value.code == "unknown_timezone"
    time_tool = registry.get("current_time")
    assert time_tool is not None and time_tool(timezone="UTC").endswith("+00:00")


def test_register_via_python_api() -> None:
    registry = ToolRegistry()
    made = registry.register_tool(double, parameters=PARAMS)
    assert made.name == "double" and made.description == "Twice n." and made(n=2) == 4

    @registry.register_tool(name="triple", parameters=PARAMS, timeout=2)
    def _triple(n: int) -> int:
        return 3 * n

    assert registry.names() == ["double", "triple"] and registry.get("triple").timeout == 2  # type: ignore[union-attr]
    assert parse_tool_call('{"tool": "triple", "args": {"n": 1}, "id": "a"}', registry).tool \
        == "triple"
    with pytest.raises(ToolSpecError):
        registry.register_tool(double, parameters=PARAMS)  # taken
    registry.register_tool(double, parameters=PARAMS, replace=True)
    registry.unregister("triple")
    assert "triple" not in registry and len(registry) == 1


def test_toolset_is_recompiled_only_after_a_change() -> None:
    registry = ToolRegistry(builtins=True)
    first = registry.toolset()
    assert registry.toolset() is first
    registry.register(Tool("double", double, PARAMS))
    assert registry.toolset() is not first and "double" in registry.toolset().names


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"name": "bad name"}, "invalid tool name"),
    ({"parameters": {"type": 5}}, "invalid parameters schema"),
    ({"func": 3}, "not callable"),
    ({"timeout": 0}, "timeout"),
])
def test_invalid_tools_are_refused(kwargs: dict[str, Any], fragment: str) -> None:
    fields: dict[str, Any] = {"name": "ok", "func": double, "parameters": PARAMS, **kwargs}
    with pytest.raises(ToolSpecError) as err:
        Tool(**fields)
    assert fragment in err.value.message


def test_decorator_keeps_the_function_callable() -> None:
    @tool(parameters=PARAMS)
    def square(n: int) -> int:
        """n squared."""
        return n * n

    assert isinstance(square, Tool) and square(n=3) == 9
    assert square.spec()["function"] == {"name": "square", "description": "n squared.",
                                         "parameters": PARAMS}


def _module(folder: Path) -> None:
    (folder / "my_tools_mod.py").write_text(
        "from owllm.tools import tool\n"
        "def shout(text):\n    '''Upper-case.'''\n    return text.upper()\n"
        "@tool(parameters={'type': 'object'})\ndef ready():\n    return 'ready'\n",
        encoding="utf-8")


def test_load_yaml_and_json_configs(tmp_path: Path) -> None:
    _module(tmp_path)
    params = {"type": "object", "properties": {"text": {"type": "string"}}}
    (tmp_path / "t.yaml").write_text(
        "python_path: [.]\ntools:\n  - function: my_tools_mod:shout\n    name: loud\n"
        f"    parameters: {json.dumps(params)}\n  - function: my_tools_mod:ready\n"
        "    timeout: 3\n", encoding="utf-8")
    tools = load_tools_config(tmp_path / "t.yaml")
    assert [t.name for t in tools] == ["loud", "ready"]
    assert tools[0](text="hi") == "HI" and tools[0].description == "Upper-case."
    assert tools[1].timeout == 3
    (tmp_path / "t.json").write_text(json.dumps([{"function": "my_tools_mod.shout",
                                                  "parameters": params}]), encoding="utf-8")
    registry = ToolRegistry(builtins=True)
    registry.load_config(tmp_path / "t.json")
    assert "shout" in registry


@pytest.mark.parametrize(("content", "fragment"), [
    ("tools:\n  - function: my_tools_mod:shout\n", "parameters: required"),
    ("tools:\n  - function: nope_mod_xyz:f\n    parameters: {}\n", "cannot import"),
    ("tools:\n  - function: my_tools_mod:shout\n    colour: red\n", "unknown key"),
    ("tools:\n  - name: x\n", "callable: required"),
    ("tools: 5\n", "'tools' list"),
    ("tools: [\n", "invalid YAML"),
])
def test_bad_configs_raise_config_error(tmp_path: Path, content: str, fragment: str) -> None:
    _module(tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text("python_path: [.]\n" + content if "[\n" not in content else content,
                    encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_tools_config(path)
    assert fragment in str(err.value) and str(path) in str(err.value)


class _EntryPoint:
    def __init__(self, name: str, obj: Any) -> None:
        self.name, self.value, self._obj = name, f"pkg:{name}", obj

    def load(self) -> Any:
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


def test_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    good = Tool("from_plugin", double, PARAMS)
    eps = [_EntryPoint("one", good), _EntryPoint("many", [Tool("other", double, PARAMS)]),
           _EntryPoint("broken", ImportError("no module"))]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: eps)
    registry = ToolRegistry()
    loaded = registry.load_entry_points()
    assert [t.name for t in loaded] == ["from_plugin", "other"]  # the broken one is skipped
    with pytest.raises(ToolSpecError):
        ToolRegistry().load_entry_points(strict=True)


def test_default_registry_and_register_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "_DEFAULT", None)
    monkeypatch.setattr(registry_module, "entry_points", lambda group: [])
    register_tool(double, parameters=PARAMS)
    assert default_registry().names()[-1] == "double"
    assert parse_tool_call('{"tool": "double", "args": {"n": 2}, "id": "a"}').tool == "double"


def _owllm_config(folder: Path, tools_yaml: str) -> Path:
    config = folder / "configs" / "llm_backends.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("models: {}\n" + tools_yaml, encoding="utf-8")
    return config


def test_tools_from_owllm_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from owllm.config import load_config
    from owllm.tools.registry import tools_from_config

    (tmp_path / "cfg_tools_mod.py").write_text(
        "def triple(n):\n    '''Three times n.'''\n    return 3 * n\n", encoding="utf-8")
    monkeypatch.setattr(sys, "path", list(sys.path))  # tools_from_config prepends the home
    config = load_config(_owllm_config(tmp_path, """tools:
  - callable: cfg_tools_mod:triple
    name: times3
    parameters: {type: object, properties: {n: {type: integer}}, required: [n],
                 additionalProperties: false}
"""))
    (made,) = tools_from_config(config)
    assert (made.name, made.description, made(n=4)) == ("times3", "Three times n.", 12)
    registry = ToolRegistry([made])
    with pytest.raises(ToolCallError) as err:
        parse_tool_call('{"tool": "times3", "args": {"n": "4"}, "id": "x"}', registry)
    assert (err.value.code, err.value.path) == ("type_error", "$.args.n")


def test_tools_from_owllm_config_reports_bad_entries(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    from owllm.config import load_config
    from owllm.tools.registry import tools_from_config

    config = load_config(_owllm_config(tmp_path, """tools:
  - callable: no_such_module_abc:f
    parameters: {type: object}
  - callable: json:dumps
"""))
    with pytest.raises(ConfigError) as err:
        tools_from_config(config)
    text = str(err.value)
    assert "no_such_module_abc" in text and "parameters: required" in text
    assert len(err.value.problems) == 2


def test_tools_file_accepts_callable_key_but_not_both(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(f"tools:\n  - callable: {__name__}:double\n"
                    f"    parameters: {json.dumps(PARAMS)}\n", encoding="utf-8")
    (loaded,) = load_tools_config(good)
    assert loaded.name == "double" and loaded(n=5) == 10
    both = tmp_path / "both.yaml"
    both.write_text(f"tools:\n  - callable: {__name__}:double\n    function: {__name__}:double\n"
                    f"    parameters: {json.dumps(PARAMS)}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="either 'function' or 'callable'"):
        load_tools_config(both)

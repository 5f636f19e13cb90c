"""A :class:`Tool`: a name, a description, a JSON schema (Draft 2020-12) for its args and a
Python callable; and the ``@tool`` decorator that makes one.

Its own module, below both :mod:`owllm.tools.registry` (which holds tools) and
:mod:`owllm.tools.builtins` (which defines some), so neither imports the other's module to
get the type: the two used to import each other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from owllm.tools.errors import ToolSpecError
from owllm.tools.specs import compile_tools, normalize_spec


@dataclass(frozen=True)
class Tool:
    """A callable tool with its args schema.  ``timeout`` (seconds) overrides the server's."""

    name: str
    func: Callable[..., Any] = field(repr=False)
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}})
    description: str = ""
    timeout: float | None = None

    def __post_init__(self) -> None:
        if not callable(self.func):
            raise ToolSpecError(f"tool {self.name!r}: {self.func!r} is not callable")
        if self.timeout is not None and not self.timeout > 0:
            raise ToolSpecError(f"tool {self.name!r}: timeout must be > 0")
        compile_tools([self.spec()])  # validates the name and the schema (then cached)

    def spec(self) -> dict[str, Any]:
        """The OpenAI-style spec ``{"type": "function", "function": {...}}``."""
        return normalize_spec({"name": self.name, "description": self.description,
                               "parameters": self.parameters})

    def __call__(self, **args: Any) -> Any:
        return self.func(**args)


def _describe(func: Callable[..., Any]) -> str:
    doc = (getattr(func, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def tool(name: str | None = None, *, parameters: Mapping[str, Any] | None = None,
         description: str | None = None,
         timeout: float | None = None) -> Callable[[Callable[..., Any]], Tool]:
    """Decorator: make a function a :class:`Tool` (name and description from the function)."""
    def wrap(func: Callable[..., Any]) -> Tool:
        return Tool(name or func.__name__, func,
                    dict(parameters or {"type": "object", "properties": {}}),
                    description if description is not None else _describe(func), timeout)
    return wrap

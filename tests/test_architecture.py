"""The shape of the house, checked from its source: imports run one way (no circles, no
arrow from a lower layer to a higher one), modules stay small, long functions say why.

Layers, lowest first (docs/decisions.md, "Layers"): foundations (errors, paths, YAML and
HTTP helpers, the backend contract) → config → state → envs → servers and backend
implementations → probes (smoke, tools) → edges (CLI, pytest plugin, the ``owllm``
facade).  In-env code (``owllm.inenv``) is outside the ladder: it imports no host-side ``owllm``
module at all (its own test checks that), so any layer may use it.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("owllm", "pytest_owllm")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# A function longer than MAX_FUNCTION_LINES says why it is one piece, in a comment or its
# docstring that names the limit ("over 60 lines on purpose: ...") or starts "# long:".
LONG_MARKER = "# long:"
LIMIT_PHRASE = f"{MAX_FUNCTION_LINES} lines"

# Module-name prefixes and their layer; the longest matching prefix wins.
LAYERS: dict[str, int] = {
    "owllm.errors": 0,
    "owllm.paths": 0,
    "owllm._yaml_lines": 0,
    "owllm._progress": 0,
    "owllm.httpclient": 0,
    "owllm.capabilities": 0,  # an HTTP probe over httpclient's rules, used by servers
    "owllm._cpu_probe": 0,
    "owllm.hardware": 0,
    "owllm.schemas": 0,
    "owllm._version": 0,
    "owllm.backends": 0,  # the package itself: the contract and the registry
    "owllm.config": 1,
    "owllm.checks": 1,  # the config's checks: block (issue 17); runs in owllm.quality
    "owllm._store_faults": 2,
    "owllm.state_store": 2, "owllm._state_db": 2, "owllm._state_schema": 2,
    "owllm.envs": 3,
    "owllm.servers": 4,
    "owllm.backends.": 4,  # implementations
    "owllm.smoke": 5, "owllm._smoke_results": 5,
    "owllm._smoke_serving": 5,  # the server a smoke holds (split from smoke)
    "owllm.servers.ladder": 4,  # the readiness ladder: process → port → health → model → token
    "owllm.tools": 5,
    "owllm.conformance": 5,
    "owllm.quality": 5,
    "owllm.cli": 6,
    "owllm.__main__": 6,
    "owllm": 6,  # the facade (__init__): imports from every layer
    "pytest_owllm": 6,
    "pytest_owllm.scheduling": 6,
    # In-env modules stand outside the ladder (they import no host-side owllm, so any layer
    # may use them); listed so the HTTP layer and its engine contract have a named place.
    "owllm.inenv.openai_app": 0,
    "owllm.inenv.engine": 0,
    "owllm.inenv.llamacpp_engine": 0,
    "owllm.inenv.serving": 0,
    "owllm.inenv.tool_stream": 0,
    "owllm.inenv.stream_close": 0,
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def _imports(name: str, path: Path) -> set[str]:
    """Every owllm module ``name`` imports at run time (TYPE_CHECKING imports excluded),
    at module level or inside functions alike: a lazy import is still an arrow."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            submodules = [f"{module}.{a.name}" for a in node.names
                          if f"{module}.{a.name}" in MODULES]
            targets.update(submodules)
            if len(submodules) < len(node.names):  # names from the module itself
                targets.add(module)
    resolved: set[str] = set()
    for target in targets:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def layer(name: str) -> int:
    best = max((prefix for prefix in LAYERS
                if name == prefix or name.startswith(prefix if prefix.endswith(".")
                                                     else prefix + ".")),
               key=len, default=None)
    assert best is not None, f"{name}: no layer in tests/test_architecture.py LAYERS"
    return LAYERS[best]


def test_every_module_has_a_layer() -> None:
    missing = [name for name in MODULES
               if not name.startswith("owllm.inenv") and not any(
                   name == p or name.startswith(p if p.endswith(".") else p + ".")
                   for p in LAYERS)]
    assert not missing


def test_no_arrow_points_up() -> None:
    upward = sorted(f"{src} (layer {layer(src)}) imports {dst} (layer {layer(dst)})"
                    for src, targets in GRAPH.items() if not src.startswith("owllm.inenv")
                    for dst in targets if not dst.startswith("owllm.inenv")
                    and layer(dst) > layer(src))
    assert not upward, "\n".join(upward)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles() -> None:
    # A package importing its own submodules (an __init__ re-exporting them) is not a
    # circle unless a submodule imports the package back for something it defines.
    graph = {src: {dst for dst in targets if not src.startswith(dst + ".")}
             for src, targets in GRAPH.items()}
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_small(name: str) -> None:
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{MODULES[name]}: {lines} lines"


def _comments(source: str) -> dict[int, str]:
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {tok.start[0]: tok.string for tok in tokens if tok.type == tokenize.COMMENT}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_long_functions_say_why(name: str) -> None:
    source = MODULES[name].read_text(encoding="utf-8")
    comments = _comments(source)
    long_ones = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            end = node.end_lineno or node.lineno
            if end - node.lineno + 1 <= MAX_FUNCTION_LINES:
                continue
            said = LIMIT_PHRASE in (ast.get_docstring(node) or "") or any(
                text.startswith(LONG_MARKER) or LIMIT_PHRASE in text
                for line, text in comments.items() if node.lineno <= line <= end)
            if not said:
                long_ones.append(f"{node.name} (line {node.lineno}, {end - node.lineno + 1} "
                                 f"lines)")
    assert not long_ones, (f"{MODULES[name]}: functions over {MAX_FUNCTION_LINES} lines "
                           f"that do not say why (a comment or docstring naming '{LIMIT_PHRASE}', "
                           f"or a '{LONG_MARKER}' comment): {', '.join(long_ones)}")

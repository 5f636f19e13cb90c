"""Tool-call case sets: JSONL files of prompts, the tools offered and the call(s) due.

One case per line (blank lines and lines starting with ``#`` are skipped)::

    {"id": "calc-1", "category": "simple", "prompt": "What is 42 * 17?",
     "tools": ["calculator"], "expected": [{"tool": "calculator",
                                             "args": {"expression": "42 * 17"}}]}

* ``category``: ``simple`` (one tool offered, one call due), ``multiple`` (several tools
  offered, one call due), ``parallel`` (two or more calls due, as one JSON array) or
  ``irrelevance`` (no offered tool applies: ``expected`` is ``null`` or ``[]``, and passing
  means not calling).  These are BFCL's categories.
* ``tools``: names of OWLLM's built-in tools, or full specs (OpenAI-style or bare
  ``{"name", "description", "parameters"}``).
* ``expected``: the call(s) due, each ``{"tool", "args"}``; the args are validated against
  the tool's schema here, so a typo in a case file fails at load time, not as a model failure.
* ``id``: optional; defaults to ``<file name>:<line>``.

Every problem is a :class:`CaseFileError` naming the file, the line and the field.  The
built-in set (``cases="builtin"``) ships as package data (``owllm/quality/data``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from owllm.errors import OwllmError
from owllm.tools import ToolCallError, ToolSpecError, normalize_spec, validate_tool_call
from owllm.tools.builtins import builtin_tools

CATEGORIES = ("simple", "multiple", "parallel", "irrelevance")
BUILTIN = "builtin"
_BUILTIN_FILE = "builtin_cases.jsonl"
_KEYS = frozenset({"id", "category", "prompt", "tools", "expected"})


class CaseFileError(OwllmError):
    """A case file is unreadable or a line in it is invalid.  ``path``, ``line`` (1-based, 0
    for the whole file) and ``field`` (``expected[0].args``) locate the problem."""

    exit_code = 2

    def __init__(self, path: str, line: int, field: str, problem: str) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {field}: {problem}" if field else f"{where}: {problem}",
                         hint="each line is one JSON object with prompt, tools, expected, "
                              "category (see owllm/quality/cases.py)")
        self.path = path
        self.line = line
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class ExpectedCall:
    """One call a case is due: the tool and its exact arguments."""

    tool: str
    args: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"tool": self.tool, "args": self.args}


@dataclass(frozen=True)
class Case:
    """One prompt with the tools offered and the call(s) due (empty: no call is due)."""

    id: str
    category: str
    prompt: str
    tools: tuple[dict[str, Any], ...]  # OpenAI-style specs
    expected: tuple[ExpectedCall, ...]
    source: str = ""  # file:line

    @property
    def tool_names(self) -> list[str]:
        return [spec["function"]["name"] for spec in self.tools]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "category": self.category, "prompt": self.prompt,
                "tools": self.tool_names, "expected": [c.to_dict() for c in self.expected]}


def builtin_specs() -> dict[str, dict[str, Any]]:
    """The built-in tools' specs (what ``owllm tools`` serves) by name."""
    return {t.name: normalize_spec(t) for t in builtin_tools()}


def load_cases(source: str | Path) -> list[Case]:
    """The cases of ``source``: ``"builtin"`` or a path to a JSONL file."""
    if str(source) == BUILTIN:
        text = resources.files("owllm.quality").joinpath("data", _BUILTIN_FILE) \
            .read_text(encoding="utf-8")
        return parse_cases(text, f"<builtin>/{_BUILTIN_FILE}")
    path = Path(source).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CaseFileError(str(path), 0, "", f"cannot read the case file ({exc})") from exc
    return parse_cases(text, str(path))


def parse_cases(text: str, path: str = "<cases>") -> list[Case]:
    """Parse JSONL case text; ``path`` is only used in error messages and default ids."""
    builtins = builtin_specs()
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        case = _parse_line(raw, path, number, builtins)
        if case.id in seen:
            raise CaseFileError(path, number, "id", f"{case.id!r} was already used on line "
                                                    f"{seen[case.id]}")
        seen[case.id] = number
        cases.append(case)
    if not cases:
        raise CaseFileError(path, 0, "", "no cases in the file")
    return cases


def _parse_line(raw: str, path: str, number: int, builtins: dict[str, Any]) -> Case:
    def fail(field: str, problem: str) -> CaseFileError:
        return CaseFileError(path, number, field, problem)

    try:
        item = json.loads(raw)
    except ValueError as exc:
        raise fail("", f"not valid JSON ({exc})") from None
    if not isinstance(item, dict):
        raise fail("", f"a case is a JSON object, not {type(item).__name__}")
    unknown = sorted(set(item) - _KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown field (known: {', '.join(sorted(_KEYS))})")
    category = item.get("category")
    if category not in CATEGORIES:
        raise fail("category", f"{category!r} is not one of {', '.join(CATEGORIES)}")
    prompt = item.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise fail("prompt", "must be a non-empty string")
    case_id = item.get("id", f"{Path(path).name}:{number}")
    if not isinstance(case_id, str) or not case_id:
        raise fail("id", "must be a non-empty string")
    tools = _tools(item.get("tools"), fail, builtins)
    expected = _expected(item.get("expected", None), "expected" in item, tools, fail)
    _check_category(category, tools, expected, fail)
    return Case(case_id, category, prompt, tuple(tools), tuple(expected), f"{path}:{number}")


def _tools(value: Any, fail: Any, builtins: dict[str, Any]) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise fail("tools", "must be a non-empty list of built-in tool names or tool specs")
    specs: list[dict[str, Any]] = []
    for i, entry in enumerate(value):
        if isinstance(entry, str):
            if entry not in builtins:
                raise fail(f"tools[{i}]", f"{entry!r} is not a built-in tool (built-in: "
                                          f"{', '.join(sorted(builtins))}); give a full spec")
            specs.append(builtins[entry])
            continue
        try:
            specs.append(normalize_spec(entry))
        except ToolSpecError as exc:
            raise fail(f"tools[{i}]", exc.message) from None
    names = [s["function"]["name"] for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise fail("tools", f"tool {duplicates[0]!r} is offered twice")
    return specs


def _expected(value: Any, given: bool, tools: list[dict[str, Any]],
              fail: Any) -> list[ExpectedCall]:
    if not given:
        raise fail("expected", "missing (a list of calls, or null for no call)")
    if value is None or value == []:
        return []
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise fail("expected", "must be a call object, a list of them, or null")
    calls = []
    for i, entry in enumerate(value):
        field = f"expected[{i}]"
        if not isinstance(entry, dict) or set(entry) - {"tool", "args"} or "tool" not in entry:
            raise fail(field, 'must be {"tool": name, "args": {...}}')
        envelope = {"tool": entry["tool"], "args": entry.get("args", {}), "id": "expected"}
        try:
            validate_tool_call(envelope, tools)
        except ToolCallError as exc:
            sub = exc.path.replace("$", field, 1)
            raise fail(sub, f"{exc.message} [{exc.code}]") from None
        calls.append(ExpectedCall(entry["tool"], dict(envelope["args"])))
    return calls


def _check_category(category: str, tools: list[Any], expected: list[ExpectedCall],
                    fail: Any) -> None:
    if category == "irrelevance" and expected:
        raise fail("expected", "an irrelevance case expects no call (null)")
    if category != "irrelevance" and not expected:
        raise fail("expected", f"a {category} case expects at least one call")
    if category == "parallel" and len(expected) < 2:
        raise fail("expected", "a parallel case expects two or more calls")
    if category in ("simple", "multiple") and len(expected) != 1:
        raise fail("expected", f"a {category} case expects exactly one call")
    if category == "simple" and len(tools) != 1:
        raise fail("tools", "a simple case offers exactly one tool")
    if category == "multiple" and len(tools) < 2:
        raise fail("tools", "a multiple case offers two or more tools")


def select(cases: Iterable[Case], samples: int | None, seed: int = 0) -> list[Case]:
    """At most ``samples`` cases, spread over the categories (round-robin over each
    category's cases in a seeded shuffle), in a stable order; ``None`` keeps them all."""
    cases = list(cases)
    if samples is None or samples >= len(cases):
        return cases
    import random

    rng = random.Random(seed)
    groups = {c: [x for x in cases if x.category == c] for c in CATEGORIES}
    for group in groups.values():
        rng.shuffle(group)
    picked: list[Case] = []
    while len(picked) < samples:
        for group in groups.values():
            if group and len(picked) < samples:
                picked.append(group.pop(0))
    order = {case.id: i for i, case in enumerate(cases)}
    return sorted(picked, key=lambda case: order[case.id])

"""Case files: the built-in set loads and ships, user files parse, and every mistake names
its file, line and field."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from owllm.quality import CATEGORIES, CaseFileError, load_cases, parse_cases, select

CALC = {"tool": "calculator", "args": {"expression": "2 + 2"}}
GOOD = [
    {"id": "a", "category": "simple", "prompt": "What is 2 + 2?", "tools": ["calculator"],
     "expected": [CALC]},
    {"category": "multiple", "prompt": "2 + 2?", "tools": ["echo", "calculator"],
     "expected": CALC},
    {"id": "p", "category": "parallel", "prompt": "2 + 2 and echo hi",
     "tools": ["calculator", "echo"],
     "expected": [CALC, {"tool": "echo", "args": {"text": "hi"}}]},
    {"id": "i", "category": "irrelevance", "prompt": "Tell me a joke", "tools": ["echo"],
     "expected": None},
    {"id": "own", "category": "simple", "prompt": "weather in Paris?",
     "tools": [{"name": "weather", "description": "the weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]}}],
     "expected": [{"tool": "weather", "args": {"city": "Paris"}}]},
]


def write(tmp_path: Path, items: list[object], extra: str = "") -> Path:
    path = tmp_path / "cases.jsonl"
    lines = ["# my cases", ""] + [json.dumps(i) if not isinstance(i, str) else i for i in items]
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


def test_a_good_file_parses(tmp_path: Path) -> None:
    cases = load_cases(write(tmp_path, GOOD))
    assert [c.category for c in cases] == ["simple", "multiple", "parallel", "irrelevance",
                                           "simple"]
    assert cases[1].id == "cases.jsonl:4"  # default id: file name and line (after 2 skipped)
    assert cases[1].tool_names == ["echo", "calculator"]
    assert cases[1].expected[0].args == {"expression": "2 + 2"}
    assert cases[3].expected == ()
    assert cases[4].tools[0]["function"]["parameters"]["required"] == ["city"]
    assert cases[0].source.endswith("cases.jsonl:3")


def test_a_typo_names_the_line_and_field(tmp_path: Path) -> None:
    typo = dict(GOOD[0], id="t", expected=[{"tool": "calculator",
                                             "args": {"expresion": "2 + 2"}}])
    path = write(tmp_path, [GOOD[0], typo])
    with pytest.raises(CaseFileError) as info:
        load_cases(path)
    error = info.value
    assert (error.line, error.path) == (4, str(path))
    assert error.field.startswith("expected[0].args")
    assert f"{path}:4: expected[0].args" in str(error)
    assert "expresion" in str(error) or "expression" in str(error)


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"category": "simpel"}, "category", "not one of simple, multiple"),
    ({"prompt": ""}, "prompt", "non-empty"),
    ({"tools": ["calculater"]}, "tools[0]", "not a built-in tool"),
    ({"tools": []}, "tools", "non-empty list"),
    ({"tools": ["calculator", "calculator"]}, "tools", "offered twice"),
    ({"expected": [{"tool": "echo", "args": {"text": "x"}}]}, "expected[0].tool",
     "unknown"),
    ({"expected": [{"tool": "calculator", "args": {"expression": 4}}]},
     "expected[0].args.expression", "type_error"),
    ({"expected": [{"tool": "calculator", "argz": {}}]}, "expected[0]", '"tool"'),
    ({"expected": None}, "expected", "at least one call"),
    ({"expected": [CALC, CALC]}, "expected", "exactly one call"),
    ({"tools": ["calculator", "echo"]}, "tools", "exactly one tool"),
    ({"expectd": [CALC]}, "expectd", "unknown field"),
    ({"id": 7}, "id", "non-empty string"),
])
def test_each_mistake_is_named(tmp_path: Path, change: dict[str, object], field: str,
                               words: str) -> None:
    with pytest.raises(CaseFileError) as info:
        load_cases(write(tmp_path, [{**GOOD[0], **change}]))
    assert info.value.line == 3
    assert info.value.field == field
    assert words in str(info.value)


@pytest.mark.parametrize(("line", "words"), [
    ("{not json", "not valid JSON"), ("[1, 2]", "JSON object, not list"),
])
def test_broken_lines(tmp_path: Path, line: str, words: str) -> None:
    with pytest.raises(CaseFileError, match=words) as info:
        load_cases(write(tmp_path, [GOOD[0], line]))
    assert info.value.line == 4


def test_file_level_problems(tmp_path: Path) -> None:
    with pytest.raises(CaseFileError, match="cannot read") as info:
        load_cases(tmp_path / "missing.jsonl")
    assert info.value.line == 0
    with pytest.raises(CaseFileError, match="no cases"):
        parse_cases("# only a comment\n\n", "empty.jsonl")
    with pytest.raises(CaseFileError, match="already used on line 1") as dup:
        parse_cases(json.dumps(GOOD[0]) + "\n" + json.dumps(GOOD[0]), "dup.jsonl")
    assert dup.value.line == 2
    category_errors = [
        ({**GOOD[3], "expected": [CALC], "tools": ["calculator"]}, "expects no call"),
        ({**GOOD[2], "expected": [CALC]}, "two or more calls"),
        ({**GOOD[1], "tools": ["calculator"]}, "two or more tools"),
    ]
    for item, words in category_errors:
        with pytest.raises(CaseFileError, match=words):
            parse_cases(json.dumps(item), "c.jsonl")


def test_the_builtin_set() -> None:
    cases = load_cases("builtin")
    assert len(cases) >= 100
    counts = Counter(c.category for c in cases)
    assert set(counts) == set(CATEGORIES) and min(counts.values()) >= 10
    assert {n for c in cases for n in c.tool_names} == {"calculator", "echo", "current_time"}
    assert len({c.id for c in cases}) == len(cases)


def test_builtin_set_is_package_data() -> None:
    """The wheel ships it: hatch includes every file under owllm/ that git does not ignore;
    the file is tracked, and the loader reads it through importlib.resources."""
    from importlib import resources

    assert resources.files("owllm.quality").joinpath("data", "builtin_cases.jsonl").is_file()


def test_select_spreads_over_categories_and_is_stable() -> None:
    cases = load_cases("builtin")
    picked = select(cases, 12, seed=3)
    assert len(picked) == 12
    assert Counter(c.category for c in picked) == {c: 3 for c in CATEGORIES}
    assert [c.id for c in picked] == [c.id for c in select(cases, 12, seed=3)]
    assert [c.id for c in picked] != [c.id for c in select(cases, 12, seed=4)]
    order = [c.id for c in cases]
    assert [c.id for c in picked] == sorted((c.id for c in picked), key=order.index)
    assert select(cases, None) == cases and select(cases, 10_000) == cases

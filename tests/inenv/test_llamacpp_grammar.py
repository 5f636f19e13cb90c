"""lower_schema: what llama-cpp-python's grammar converter ignores, rewritten into what it
enforces (the grammar itself is exercised on real servers in tests/backends/test_engines.py)."""

from __future__ import annotations

from owllm.inenv.llamacpp_grammar import MAX_ENUM_INTEGERS, lower_schema


def test_small_integer_ranges_become_enums_everywhere() -> None:
    schema = {"type": "object", "properties": {
        "a": {"type": "integer", "minimum": 1, "maximum": 3},
        "b": {"type": "array", "items": {"type": "integer", "exclusiveMinimum": 0.5,
                                         "exclusiveMaximum": 3}}}}
    lowered = lower_schema(schema)
    assert lowered["properties"]["a"] == {"enum": [1, 2, 3]}
    assert lowered["properties"]["b"]["items"] == {"enum": [1, 2]}


def test_what_cannot_become_an_enum_is_left_alone() -> None:
    wide = {"type": "integer", "minimum": 0, "maximum": MAX_ENUM_INTEGERS}
    assert lower_schema(wide) == wide
    for schema in ({"type": "integer", "minimum": 0}, {"type": "number", "minimum": 0,
                                                        "maximum": 2},
                   {"type": "integer", "enum": [7], "minimum": 0, "maximum": 9},
                   {"type": "integer", "minimum": 5, "maximum": 1}):
        assert lower_schema(schema) == schema

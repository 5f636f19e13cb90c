"""Hypothesis strategies for tool calls: valid ones, invalid ones per error code, and
arbitrary text.  Imports only ``owllm`` and ``hypothesis``: args come from a built-in generator for
the simple schema subset tools use, and from ``hypothesis-jsonschema`` (when installed) for
anything richer.

    @given(valid_tool_calls())
    def test_accepts(text): parse_tool_call(text)

    @given(invalid_tool_calls("missing_required"))
    def test_rejects(case):
        text, code = case            # case.path is the expected JSON path
        with pytest.raises(ToolCallError) as err: parse_tool_call(text)
        assert (err.value.code, err.value.path) == (code, case.path)

Invalid args are checked against an independent oracle (a plain jsonschema validator): a
candidate is kept only when every schema error it triggers is of the intended kind at the
intended path, so the expected code and path hold for arbitrary user schemas too.  Codes about
args need a tool whose schema allows the fault (e.g. ``unexpected_param`` needs
``additionalProperties: false``); :func:`invalid_tool_calls` raises ValueError when none does.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable, Mapping
from typing import Any

from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from owllm.tools.errors import CODES
from owllm.tools.parser import MAX_CALLS, MAX_DEPTH, MAX_TEXT_CHARS, join_path
from owllm.tools.registry import default_registry
from owllm.tools.specs import ID_MAX, TOOL_NAME_MAX, normalize_spec

_KINDS = {"missing_required": ("required",),
          "unexpected_param": ("additionalProperties", "unevaluatedProperties"),
          "type_error": ("type",)}


class InvalidCall(tuple):
    """``(text, expected_code)``; ``.path`` is the expected JSON path of the fault."""

    path: str

    def __new__(cls, text: str, code: str, path: str) -> InvalidCall:
        made = super().__new__(cls, (text, code))
        made.path = path
        return made

    @property
    def text(self) -> str:
        """The call text."""
        return str(self[0])

    @property
    def code(self) -> str:
        """The expected ToolCallError code."""
        return str(self[1])


def _functions(tools: Iterable[Any] | None) -> list[dict[str, Any]]:
    specs = default_registry().specs() if tools is None else [normalize_spec(t) for t in tools]
    if not specs:
        raise ValueError("no tools to build calls for")
    return [s["function"] for s in specs]


_SIMPLE_KEYS = {"type", "properties", "required", "additionalProperties", "description",
                "title", "default", "examples", "enum", "const", "minLength", "maxLength",
                "pattern", "minimum", "maximum", "items", "minItems", "maxItems", "$schema"}


def _simple_args(schema: Any) -> st.SearchStrategy[Any]:
    """Values for simple schemas (the common tool-args subset); ValueError otherwise."""
    if schema is True or schema == {}:
        return st.one_of(st.none(), st.booleans(), st.integers(-9, 9), st.text(max_size=5))
    if not isinstance(schema, Mapping) or set(schema) - _SIMPLE_KEYS:
        raise ValueError(f"not a simple schema: {schema!r}")
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(list(schema["enum"]))
    kind = schema.get("type", "object" if "properties" in schema else None)
    if isinstance(kind, list):
        return st.one_of([_simple_args({**schema, "type": k}) for k in kind])
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"]).filter(
                lambda s: low <= len(s) and (high is None or len(s) <= high))
        return st.text(min_size=low, max_size=min(high if high is not None else 40, 40))
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False,
                         allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(_simple_args(schema.get("items", {})),
                        min_size=schema.get("minItems", 0),
                        max_size=min(schema.get("maxItems", 5), 5))
    if kind == "object":
        props = schema.get("properties", {})
        if schema.get("additionalProperties", False) not in (True, False):
            raise ValueError("additionalProperties schemas need hypothesis-jsonschema")
        required = set(schema.get("required", []))
        if required - set(props):
            raise ValueError("required keys without properties")
        return st.fixed_dictionaries(
            {k: _simple_args(v) for k, v in props.items() if k in required},
            optional={k: _simple_args(v) for k, v in props.items() if k not in required})
    raise ValueError(f"not a simple schema: {schema!r}")


def args_for(parameters: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    """Valid args for a parameters schema: a built-in generator for the simple subset
    (properties, required, type, enum, const, lengths, pattern, bounds, items), else
    hypothesis-jsonschema."""
    try:
        return _simple_args(parameters)
    except ValueError:
        pass
    try:
        from hypothesis_jsonschema import from_schema
    except ImportError as exc:
        raise ValueError("install hypothesis-jsonschema to generate args for "
                         f"{dict(parameters)!r}") from exc
    return from_schema(dict(parameters))


def _ids() -> st.SearchStrategy[str]:
    return st.one_of(st.from_regex(r"call_[a-z0-9]{1,8}", fullmatch=True),
                     st.text(min_size=1, max_size=ID_MAX))


@st.composite
def valid_envelopes(draw: st.DrawFn, tools: Iterable[Any] | None = None) -> dict[str, Any]:
    """A valid call as a dict."""
    function = draw(st.sampled_from(_functions(tools)))
    args = draw(args_for(function["parameters"]))
    return {"tool": function["name"], "args": args, "id": draw(_ids())}


@st.composite
def _render(draw: st.DrawFn, value: Any) -> str:
    indent = draw(st.sampled_from([None, None, 0, 2]))
    text = json.dumps(value, indent=indent, ensure_ascii=draw(st.booleans()),
                      sort_keys=draw(st.booleans()))
    pad = st.text(alphabet=" \t\r\n", max_size=3)
    return draw(pad) + text + draw(pad)


@st.composite
def valid_tool_calls(draw: st.DrawFn, tools: Iterable[Any] | None = None) -> str:
    """Text of a valid call: one envelope, or sometimes an array of calls with distinct ids."""
    tools = None if tools is None else list(tools)
    if draw(st.integers(0, 4)) == 0:
        calls = draw(st.lists(valid_envelopes(tools), min_size=1, max_size=3,
                              unique_by=lambda c: c["id"]))
        return draw(_render(calls))
    return draw(_render(draw(valid_envelopes(tools))))


def _oracle(parameters: Mapping[str, Any], args: Any) -> list[Any]:
    validator = Draft202012Validator(dict(parameters))
    return list(validator.iter_errors(args))


def _error_path(error: Any) -> str:
    path = "$.args"
    for key in error.absolute_path:
        path = join_path(path, key)
    return path


_NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,20}", fullmatch=True)
_WRONG = [0, 1.5, "x", True, None, [], {}]


def _json_types(value: Any) -> set[str]:
    if isinstance(value, bool):
        return {"boolean"}
    if isinstance(value, int):
        return {"integer", "number"}
    if isinstance(value, float):
        return {"number"}
    return {"string" if isinstance(value, str) else "null" if value is None
            else "array" if isinstance(value, list) else "object"}


@st.composite
def _args_fault(draw: st.DrawFn, code: str, functions: list[dict[str, Any]]) -> InvalidCall:
    function = draw(st.sampled_from(functions))
    params = function["parameters"]
    args = dict(draw(args_for(params)))
    props = params.get("properties", {})
    if code == "missing_required":
        present = [k for k in params.get("required", []) if k in args]
        key = draw(st.sampled_from(present)) if present else None
        if key is None:
            return draw(st.nothing())
        del args[key]
        path = join_path("$.args", key)
    elif code == "unexpected_param":
        key = draw(_NAMES.filter(lambda k: k not in props))
        args[key] = draw(st.sampled_from(_WRONG))
        path = join_path("$.args", key)
    elif code == "type_error":
        typed = [k for k, v in props.items() if isinstance(v, dict)
                 and isinstance(v.get("type"), str)]
        if not typed:
            return draw(st.nothing())
        key = draw(st.sampled_from(typed))
        wanted = props[key]["type"]
        args[key] = draw(st.sampled_from([w for w in _WRONG if wanted not in _json_types(w)]))
        path = join_path("$.args", key)
    else:  # constraint
        if not props:
            return draw(st.nothing())
        key = draw(st.sampled_from(sorted(props)))
        sub = props[key] if isinstance(props[key], dict) else {}
        candidates: list[Any] = ["", " ", "a b!", "x" * (int(sub.get("maxLength", 8)) + 1),
                                 -(10 ** 9), 10 ** 9, 0.5, "not-in-enum"]
        args[key] = draw(st.sampled_from(candidates))
        path = join_path("$.args", key)
    errors = _oracle(params, args)
    kinds = _KINDS.get(code)
    ok = bool(errors) and all(
        _error_path(e) == (path if code not in ("missing_required", "unexpected_param")
                             else "$.args")
        and ((e.validator in kinds) if kinds else
             (e.validator not in ("type", "required", "additionalProperties",
                                  "unevaluatedProperties")))
        for e in errors)
    if not ok:
        return draw(st.nothing())
    envelope = {"tool": function["name"], "args": args, "id": draw(_ids())}
    return InvalidCall(draw(_render(envelope)), code, path)


def _eligible(code: str, functions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def fits(f: dict[str, Any]) -> bool:
        p = f["parameters"]
        if code == "missing_required":
            return bool(p.get("required"))
        if code == "unexpected_param":
            return p.get("additionalProperties") is False and not p.get("patternProperties")
        return bool(p.get("properties"))
    return [f for f in functions if fits(f)]


def invalid_tool_calls(code: str, tools: Iterable[Any] | None = None
                       ) -> st.SearchStrategy[InvalidCall]:
    """``(text, code)`` pairs (:class:`InvalidCall`, with ``.path``) that must be rejected
    with exactly ``code`` at ``.path``."""
    # Over 60 lines on purpose: one short branch per envelope error code, each fault next to
    # the path it must be reported at; split up, a code's fault and path would drift apart.
    if code not in CODES:
        raise ValueError(f"unknown code {code!r}; known: {sorted(CODES)}")
    functions = _functions(tools)
    names = [f["name"] for f in functions]
    tools = None if tools is None else list(tools)
    valid = valid_envelopes(tools)
    if code in ("missing_required", "unexpected_param", "type_error", "constraint"):
        eligible = _eligible(code, functions)
        if not eligible:
            raise ValueError(f"no tool's schema can produce {code}")
        return _args_fault(code, eligible)

    @st.composite
    def build(draw: st.DrawFn) -> InvalidCall:
        call = draw(valid)
        path = "$"
        if code == "invalid_json":
            good = json.dumps(call)
            text = draw(st.sampled_from([
                "Sure! Here is the call: " + good, good + "\nDone.", f"```json\n{good}\n```",
                f"<tool_call>{good}</tool_call>", good[:-1], good + good, good.replace('"', "'"),
                f'{call["tool"]}(expression="1+1")', '{"tool": NaN, "args": {}, "id": "a"}',
                good[:-1] + ', "x": Infinity}', "", "   "]))
        elif code == "not_an_object":
            value, path = draw(st.sampled_from([(42, "$"), ("text", "$"), (None, "$"),
                                                ([], "$"), ([1], "$[0]"), (True, "$"),
                                                ([call, [call]], "$[1]")]))
            text = json.dumps(value)
        elif code == "too_large":
            if draw(st.booleans()):
                text = json.dumps(call) + " " * MAX_TEXT_CHARS
            else:
                text = json.dumps([dict(call, id=f"c{i}") for i in range(MAX_CALLS + 1)])
        elif code == "too_deep":
            levels = draw(st.integers(MAX_DEPTH - 1, 3 * MAX_DEPTH))
            call = dict(call, args={"n": json.loads("[" * levels + "]" * levels)})
            text, path = json.dumps(call), "$.args.n" + "[0]" * (MAX_DEPTH - 2)
        elif code == "duplicate_key":
            key = draw(st.sampled_from(["tool", "args", "id"]))
            body = json.dumps(call)[1:-1]
            text, path = "{" + body + f", {json.dumps(key)}: {json.dumps(call[key])}" + "}", \
                join_path("$", key)
        elif code == "missing_field":
            drop = draw(st.lists(st.sampled_from(["tool", "args", "id"]), min_size=1,
                                 unique=True))
            text = json.dumps({k: v for k, v in call.items() if k not in drop})
            path = join_path("$", next(k for k in ("tool", "args", "id") if k in drop))
        elif code == "unexpected_field":
            key = draw(st.one_of(st.sampled_from(["name", "arguments", "function", "type"]),
                                 st.text(max_size=10)).filter(lambda k: k not in call))
            text, path = json.dumps({**call, key: 1}), join_path("$", key)
        elif code == "bad_tool_name":
            bad: Any = draw(st.one_of(
                st.sampled_from([None, 1, [], {}, "", "9abc", "a-b", "a b", "calc\n", "é",
                                 "a" * (TOOL_NAME_MAX + 1), "_x"]),
                st.text(min_size=1, max_size=5).filter(
                    lambda s: not (s[:1].isascii() and s[:1].isalpha()))))
            text, path = json.dumps({**call, "tool": bad}), "$.tool"
        elif code == "bad_id":
            bad = draw(st.sampled_from([None, "", 7, [], {}, "x" * (ID_MAX + 1), True]))
            text, path = json.dumps({**call, "id": bad}), "$.id"
        elif code == "duplicate_id":
            others = draw(st.lists(valid, min_size=1, max_size=3, unique_by=lambda c: c["id"]))
            others = [c for c in others if c["id"] != call["id"]]
            index = len(others) + 1
            text, path = json.dumps([call, *others, dict(call)]), f"$[{index}].id"
        else:  # unknown_tool
            name = draw(_NAMES.filter(lambda n: n not in names))
            text, path = json.dumps({**call, "tool": name}), "$.tool"
        return InvalidCall(text, code, path)

    return build()


def arbitrary_text() -> st.SearchStrategy[str]:
    """Any text a model might emit: random unicode, JSON-ish fragments, mutated calls, deep
    nesting, huge numbers."""
    fragments = st.sampled_from(['{', '}', '[', ']', '"', ':', ',', 'NaN', '-Infinity', '1e999',
                                 '"tool"', '"args"', '"id"', '{}', 'null', 'true', '9' * 400,
                                 '\\u0000', '\\ud800', '```', '<x>', ' ', '\n'])
    mutated = st.builds(lambda t, i, s: t[:i] + s + t[i + 1:], valid_tool_calls(),
                        st.integers(0, 200), st.text(max_size=3))
    return st.one_of(
        st.text(),
        st.text(alphabet=string.printable),
        st.lists(fragments, max_size=40).map("".join),
        mutated,
        st.integers(1, 5000).map(lambda n: "[" * n),
        st.integers(1, 3000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    )


# Scalar argument schemas every constrained decoder is expected to handle (a backend's
# capabilities say which it enforces: filter with ``capabilities.enforces``).
SCALAR_SCHEMAS: tuple[dict[str, Any], ...] = (
    {"type": "integer", "minimum": 0, "maximum": 999},
    {"type": "boolean"},
    {"type": "string", "maxLength": 8},
    {"type": "string", "enum": ["red", "green", "blue"]},
    {"type": "number", "minimum": -10, "maximum": 10},
)
_SPEC_NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)


@st.composite
def tool_specs(draw: st.DrawFn, scalars: st.SearchStrategy[dict[str, Any]] | None = None
               ) -> list[dict[str, Any]]:
    """One to three OpenAI-style tool specs whose args are objects of ``scalars`` (default:
    :data:`SCALAR_SCHEMAS`; strict: ``additionalProperties: false``, a random subset
    required): schemas to fuzz a model's constrained output against."""
    scalars = scalars if scalars is not None else st.sampled_from(SCALAR_SCHEMAS)
    names = draw(st.lists(_SPEC_NAMES, min_size=1, max_size=3, unique=True))
    specs = []
    for name in names:
        props = draw(st.dictionaries(_SPEC_NAMES, scalars, max_size=3))
        required = sorted(draw(st.sets(st.sampled_from(sorted(props)))) if props else set())
        specs.append({"type": "function", "function": {"name": name, "parameters": {
            "type": "object", "properties": props, "required": required,
            "additionalProperties": False}}})
    return specs

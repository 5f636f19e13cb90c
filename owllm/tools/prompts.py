"""Prompt templates that ask a model for a tool call as one strict JSON envelope, and the
JSON schema for constrained decoding (OpenAI ``response_format`` of type ``json_schema``).

The templates belong to the backends (:attr:`owllm.backends.Backend.prompt_template`); each
is a ``str`` with the fields ``{tools}`` (see :func:`render_tools`) and ``{prompt}``::

    template_for("vllm").format(tools=render_tools(specs), prompt="What is 42 * 17?")
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import Any

from owllm.backends import get_backend
from owllm.tools.specs import normalize_spec

#: ids a model may emit under constrained decoding: short and bounded, so a random model
#: cannot loop inside the id string.
# The pattern bounds the length itself: xgrammar (vLLM) rejects a string schema that has
# both a pattern and minLength/maxLength.
ID_PATTERN = "^call_[A-Za-z0-9]{1,12}$"


def template_for(backend: str) -> str:
    """The tool-call prompt template of an installed backend (its
    :attr:`~owllm.backends.Backend.prompt_template`; ``llama.cpp``/``llama_cpp`` name
    ``llamacpp``).  An unknown backend is a UsageError listing the installed ones: a
    template picked by guess would test a prompt the backend never gets."""
    return get_backend(backend).prompt_template


# The README's names for the built-in backends' templates, kept as aliases of
# template_for() (a module attribute read on access, so the backend stays the source).
_GUIDE_NAMES = {"TRANSFORMERS_TEMPLATE": "transformers", "VLLM_TEMPLATE": "vllm",
                "LLAMACPP_TEMPLATE": "llamacpp"}


def __getattr__(name: str) -> str:
    if name in _GUIDE_NAMES:
        return template_for(_GUIDE_NAMES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def render_tools(tools: Iterable[Any]) -> str:
    """One line per tool: ``- name: description`` then its parameters schema as compact JSON.

    Accepts OpenAI-style or bare specs, or :class:`~owllm.tools.registry.Tool` objects.
    """
    lines = []
    for spec in tools:
        function = normalize_spec(spec)["function"]
        description = function["description"] or "(no description)"
        params = json.dumps(function["parameters"], separators=(",", ":"), sort_keys=True)
        lines.append(f"- {function['name']}: {description}\n  args schema: {params}")
    return "\n".join(lines)


# A string bounded by length, as a pattern: no quote, backslash or control character, so
# the raw text between the quotes is the string itself (see decodable()).
_BOUNDED_STRING = '^[^"\\\\\\x00-\\x1f]{{{low},{high}}}$'
_SUBSCHEMA_KEYS = ("items", "additionalProperties", "not", "if", "then", "else")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")


def decodable(schema: Any) -> Any:
    """A copy of ``schema`` that constrained decoders enforce as written.

    xgrammar (vLLM's decoder) lets raw control characters into a string that has
    ``minLength``/``maxLength`` and no pattern, which no strict JSON parser accepts, and it
    rejects a pattern combined with a length.  Such strings become an equivalent pattern
    that also leaves out quotes and backslashes.  The result only steers decoding; calls are
    still validated against the tool's own schema, which every such output satisfies.
    """
    if isinstance(schema, list):
        return [decodable(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: decodable(value) if key in _SUBSCHEMA_KEYS else value
           for key, value in schema.items()}
    for key in _SUBSCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            out[key] = [decodable(item) for item in schema[key]]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(schema.get(key), dict):
            out[key] = {name: decodable(sub) for name, sub in schema[key].items()}
    if schema.get("type") == "string" and ("minLength" in schema or "maxLength" in schema) \
            and not any(k in schema for k in ("pattern", "format", "enum", "const")):
        low = int(out.pop("minLength", 0))
        high = out.pop("maxLength", None)
        out["pattern"] = _BOUNDED_STRING.format(low=low, high="" if high is None else int(high))
    return out


def tool_call_response_schema(tools: Iterable[Any]) -> dict[str, Any]:
    """A JSON schema whose ``anyOf`` has one strict envelope per tool: ``tool`` is a
    ``const``, ``args`` the tool's parameters (``additionalProperties: false`` unless the tool
    says otherwise), ``id`` a short bounded string.  Under a constrained decoder even a random
    model then emits a call that :func:`~owllm.tools.parse_tool_call` accepts (for args
    schemas the decoder fully enforces)."""
    options = []
    for spec in tools:
        function = normalize_spec(spec)["function"]
        args = decodable(copy.deepcopy(function["parameters"]))
        if args.get("type", "object") == "object":
            args.setdefault("type", "object")
            args.setdefault("properties", {})
            args.setdefault("additionalProperties", False)
        options.append({
            "type": "object",
            "properties": {
                "tool": {"const": function["name"]},
                "args": args,
                "id": {"type": "string", "pattern": ID_PATTERN},
            },
            "required": ["tool", "args", "id"],
            "additionalProperties": False,
        })
    if not options:
        raise ValueError("tool_call_response_schema needs at least one tool")
    return {"anyOf": options}

"""The ``checks:`` block of ``llm_backends.yaml`` (issue 17): quality gates per model, with a
top-level default.

    checks:                      # top level: the default of every model
      tool_calls: {cases: builtin, samples: 20, min_pass_rate: 0}
      latency: {max_startup_s: 600, max_first_token_s: 10, min_tokens_per_s: 1}
    models:
      demo-vllm:
        checks:
          parity: {with: demo, min_prefix_tokens: 16}
          latency: null          # this model: no latency gate

A model's block is merged with the default gate by gate: a gate the model names takes the
default's keys and overrides them with its own (``tool_calls: {min_pass_rate: 0.8}`` keeps
the default's ``samples``); ``gate: null`` switches a default gate off.  A default
``parity: {with: X}`` applies to every model but ``X`` itself.

This module sits beside :mod:`owllm.config` (layer 1): it validates and freezes the block; what
runs a gate is :mod:`owllm.quality.gates` (layer 5).  Shape errors come from the JSON Schema
(:data:`CHECKS_SCHEMA`, added to the config schema at load) and name file:line like every
other field; :func:`check_problems` adds what a schema cannot see (``parity.with`` naming an
unknown model or the model itself, a case file that does not exist).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from owllm._yaml_lines import dotted

GATES = ("tool_calls", "latency", "parity")
#: owllm.quality.cases.CATEGORIES (a test keeps the two equal: this layer cannot import it)
CATEGORIES = ("simple", "multiple", "parallel", "irrelevance")
BOTH = "both"
_MODEL_ID = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_POSITIVE = {"type": "number", "exclusiveMinimum": 0}

#: The keys of ``tool_calls``: owllm.quality.ToolCallSettings' fields plus ``categories``
#: (a test keeps them in step).
TOOL_CALLS_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"], "additionalProperties": False,
    "properties": {
        "cases": {"type": "string", "minLength": 1,
                  "description": "builtin, or a JSONL case file (relative: to the home)"},
        "min_pass_rate": {"type": "number", "minimum": 0, "maximum": 1},
        "samples": {"type": "integer", "minimum": 1, "maximum": 100000},
        "constrained": {"enum": [False, True, BOTH]},
        "categories": {"type": "array", "minItems": 1, "uniqueItems": True,
                       "items": {"enum": list(CATEGORIES)}},
        "template": {"type": "string", "minLength": 1},
        "seed": {"type": "integer", "minimum": 0},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 1 << 20},
        "concurrency": {"type": "integer", "minimum": 1, "maximum": 64},
        "retries": {"type": "integer", "minimum": 0, "maximum": 10},
        "timeout": _POSITIVE,
    },
}
LATENCY_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"], "additionalProperties": False,
    "properties": {
        "max_startup_s": _POSITIVE,
        "max_first_token_s": _POSITIVE,
        "min_tokens_per_s": {"type": "number", "minimum": 0},
        "tokens": {"type": "integer", "minimum": 2, "maximum": 4096,
                   "description": "length of the greedy generation that is timed"},
    },
}
PARITY_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"], "additionalProperties": False, "required": ["with"],
    "properties": {
        "with": {"type": "string", "pattern": _MODEL_ID},
        "min_prefix_tokens": {"type": "integer", "minimum": 1, "maximum": 4096},
        "quantized_min_prefix_tokens": {"type": "integer", "minimum": 0, "maximum": 4096},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 4096},
        "prompts": {"type": "array", "minItems": 1, "maxItems": 64,
                    "items": {"type": "string", "minLength": 1}},
    },
}
CHECKS_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"], "additionalProperties": False,
    "description": "Quality gates (README: Quality gates); a model's gates override the "
                   "top-level default's key by key, gate: null turns one off.",
    "properties": {"tool_calls": TOOL_CALLS_SCHEMA, "latency": LATENCY_SCHEMA,
                   "parity": PARITY_SCHEMA},
}


def with_checks(schema: dict[str, Any]) -> dict[str, Any]:
    """The config schema with ``checks`` allowed at the top level and in every model."""
    schema["properties"]["checks"] = copy.deepcopy(CHECKS_SCHEMA)
    schema["$defs"]["model"]["properties"]["checks"] = copy.deepcopy(CHECKS_SCHEMA)
    return schema


@dataclass(frozen=True)
class ToolCallsCheck:
    """``tool_calls``: ``settings`` are owllm.quality.ToolCallSettings keys (``cases``
    resolved to an absolute path unless builtin); ``modes`` the constrained flags to run
    (``(False, True)`` for ``constrained: both``)."""

    settings: Mapping[str, Any]
    modes: tuple[bool, ...] = (False,)
    categories: tuple[str, ...] | None = None

    @property
    def min_pass_rate(self) -> float:
        return float(self.settings.get("min_pass_rate", 0.0))


@dataclass(frozen=True)
class LatencyCheck:
    """``latency``: each limit is checked when set; a gate without limits only reports."""

    max_startup_s: float | None = None
    max_first_token_s: float | None = None
    min_tokens_per_s: float | None = None
    tokens: int = 64


@dataclass(frozen=True)
class ParityCheck:
    """``parity``: greedy completions of ``prompts`` (default: owllm.conformance's) on this
    model and ``with_model`` must agree on their first ``min_prefix_tokens`` tokens;
    ``quantized_min_prefix_tokens`` replaces it when either side is a quantized GGUF (None:
    the default by quant type, owllm.quality.parity_gate)."""

    with_model: str
    min_prefix_tokens: int = 16
    quantized_min_prefix_tokens: int | None = None
    max_tokens: int | None = None
    prompts: tuple[str, ...] = ()

    @property
    def generate_tokens(self) -> int:
        return max(self.max_tokens or 0, self.min_prefix_tokens,
                   self.quantized_min_prefix_tokens or 0)


@dataclass(frozen=True)
class Checks:
    """A model's gates after merging with the default (None: no such gate)."""

    tool_calls: ToolCallsCheck | None = None
    latency: LatencyCheck | None = None
    parity: ParityCheck | None = None

    def items(self) -> list[tuple[str, str, bool | None]]:
        """(item name, gate, constrained mode) per test item, in gate order:
        ``tool_calls`` (``tool_calls-unconstrained`` and ``tool_calls-constrained`` for
        ``both``), ``latency``, ``parity-<with>``."""
        out: list[tuple[str, str, bool | None]] = []
        if self.tool_calls is not None:
            modes = self.tool_calls.modes
            for mode in modes:
                name = "tool_calls" if len(modes) == 1 else \
                    f"tool_calls-{'constrained' if mode else 'unconstrained'}"
                out.append((name, "tool_calls", mode))
        if self.latency is not None:
            out.append(("latency", "latency", None))
        if self.parity is not None:
            out.append((f"parity-{self.parity.with_model}", "parity", None))
        return out

    def __bool__(self) -> bool:
        return any(getattr(self, gate) is not None for gate in GATES)


def merged(default: Mapping[str, Any] | None, own: Mapping[str, Any] | None,
           model_id: str) -> dict[str, dict[str, Any]]:
    """The raw gate blocks of one model: the default's, then the model's key by key; a gate
    set to null in the model is dropped, and a default parity naming the model itself
    does not apply to it."""
    out: dict[str, dict[str, Any]] = {}
    for gate in GATES:
        base = (default or {}).get(gate)
        if gate == "parity" and base and base.get("with") == model_id:
            base = None
        if own is not None and gate in own:
            if own[gate] is None:
                continue
            out[gate] = {**(base or {}), **own[gate]}
        elif base is not None:
            out[gate] = dict(base)
    return out


def build_checks(blocks: Mapping[str, Mapping[str, Any]], base: Path) -> Checks | None:
    """Frozen gates from merged, schema-valid blocks; relative case files are taken from
    ``base`` (the config's home, like ``base_model``)."""
    if not blocks:
        return None
    tool_calls = latency = parity = None
    if "tool_calls" in blocks:
        values = dict(blocks["tool_calls"])
        constrained = values.pop("constrained", False)
        categories = values.pop("categories", None)
        cases = values.get("cases", "builtin")
        if cases != "builtin":
            values["cases"] = str(base / Path(cases).expanduser())
        modes = (False, True) if constrained == BOTH else (bool(constrained),)
        tool_calls = ToolCallsCheck(MappingProxyType(values), modes,
                                    tuple(categories) if categories else None)
    if "latency" in blocks:
        latency = LatencyCheck(**blocks["latency"])
    if "parity" in blocks:
        values = dict(blocks["parity"])
        values["with_model"] = values.pop("with")
        values["prompts"] = tuple(values.get("prompts", ()))
        parity = ParityCheck(**values)
    return Checks(tool_calls, latency, parity)


def check_problems(data: Mapping[str, Any], checks: Mapping[str, Checks | None]
                   ) -> list[tuple[tuple[Any, ...], str]]:
    """(path, message) of what the schema cannot see, for the config's line lookup."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    known = sorted(data.get("models") or {})
    places: list[tuple[tuple[Any, ...], str | None, Mapping[str, Any] | None]] = [
        (("checks",), None, data.get("checks"))]
    places += [(("models", m, "checks"), m, (entry or {}).get("checks"))
               for m, entry in (data.get("models") or {}).items()]
    for path, model_id, block in places:
        parity = (block or {}).get("parity")
        if parity and parity.get("with") not in known:
            problems.append(((*path, "parity", "with"),
                             f"unknown model {parity['with']!r} (known: {', '.join(known)})"))
        elif parity and model_id is not None and parity.get("with") == model_id:
            problems.append(((*path, "parity", "with"),
                             "a model cannot be compared with itself: name another model"))
    for model_id, model_checks in checks.items():
        tool_calls = model_checks.tool_calls if model_checks else None
        cases = tool_calls.settings.get("cases", "builtin") if tool_calls else "builtin"
        if cases != "builtin" and not Path(cases).is_file():
            own = ((data["models"].get(model_id) or {}).get("checks") or {}).get("tool_calls")
            where = ("models", model_id, "checks") if own and "cases" in own else ("checks",)
            problems.append(((*where, "tool_calls", "cases"),
                             f"case file not found: {cases} (model {model_id})"))
    return problems


def located_problems(shown: str, data: Mapping[str, Any], checks: Mapping[str, Checks | None],
                     lines: Mapping[tuple[Any, ...], int]) -> list[str]:
    """:func:`check_problems` as config errors: ``<file>:<line>: <dotted.path>: <message>``."""
    out = []
    for path, message in check_problems(data, checks):
        line = next((lines[path[:end]] for end in range(len(path), 0, -1)
                     if path[:end] in lines), None)
        out.append(f"{shown}:{line or '?'}: {dotted(path)}: {message}")
    return out

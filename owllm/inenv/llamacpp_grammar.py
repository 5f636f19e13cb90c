"""JSON schema -> llama.cpp GBNF grammar, with what llama-cpp-python's converter gets wrong
put right: raw control characters in strings, and integer bounds it ignores.

In-env module (``owllm.inenv``): llama_cpp comes from the ``llamacpp`` env (imported only
when a grammar is built, so the schema rewriting is testable on the host); it never imports
the host-side ``owllm``.
"""

from __future__ import annotations

import json
import math
from typing import Any

# llama-cpp-python's schema converter lets raw control characters into strings, which no
# strict JSON parser accepts; its `char` rule gets the exclusion llama.cpp's own has.
_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_STRICT_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'
# It also ignores integer bounds: a bounded integer of at most this many values becomes an
# enum.  Wider integer ranges and number (float) bounds stay unenforced, and OWLLM's
# capabilities say so (the validator still rejects such calls).
MAX_ENUM_INTEGERS = 1024


def lower_schema(schema: Any) -> Any:
    """The schema with what llama-cpp-python's converter ignores rewritten into what it
    enforces (small integer ranges -> enums)."""
    if isinstance(schema, list):
        return [lower_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: lower_schema(value) for key, value in schema.items()}
    if schema.get("type") == "integer" and "enum" not in schema:
        number = (int, float)
        lows, highs = [], []
        if isinstance(schema.get("minimum"), number):
            lows.append(math.ceil(schema["minimum"]))
        if isinstance(schema.get("exclusiveMinimum"), number):
            lows.append(math.floor(schema["exclusiveMinimum"]) + 1)
        if isinstance(schema.get("maximum"), number):
            highs.append(math.floor(schema["maximum"]))
        if isinstance(schema.get("exclusiveMaximum"), number):
            highs.append(math.ceil(schema["exclusiveMaximum"]) - 1)
        if lows and highs:
            low, high = max(lows), min(highs)
            if 0 <= high - low < MAX_ENUM_INTEGERS:
                out = {"enum": list(range(low, high + 1))}
    return out


def schema_grammar(schema: dict[str, Any]) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return json_schema_to_gbnf(json.dumps(lower_schema(schema))).replace(_LOOSE_CHAR,
                                                                         _STRICT_CHAR)

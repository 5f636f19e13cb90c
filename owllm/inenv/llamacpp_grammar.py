"""JSON schema -> llama.cpp GBNF grammar, with what llama-cpp-python's converter gets wrong
put right: raw control characters in strings, and integer bounds it ignores.

In-env module (``owllm.inenv``): llama_cpp comes from the ``llamacpp`` env (imported only
when a grammar is built, so the schema rewriting is testable on the host); it never imports
the host-side ``owllm``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
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


# Its whitespace rule lets a (random) model spend its budget on optional blanks between
# tokens; OWLLM's grammars are compact JSON, as the transformers engine's (llguidance without
# flexible whitespace): ``{"a":1}``.
_LOOSE_SPACE = 'space ::= " "?'
_NO_SPACE = 'space ::= ""'


def schema_grammar(schema: dict[str, Any]) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    gbnf = json_schema_to_gbnf(json.dumps(lower_schema(schema)))
    return gbnf.replace(_LOOSE_CHAR, _STRICT_CHAR).replace(_LOOSE_SPACE, _NO_SPACE)


@functools.lru_cache(maxsize=128)
def _cached_grammar(schema_json: str) -> str:
    return schema_grammar(json.loads(schema_json))


def cached_grammar(schema: dict[str, Any]) -> str:
    """:func:`schema_grammar`, compiled once per distinct schema (a tool-calling client sends
    the same tools with every request); raises what the converter raises."""
    return _cached_grammar(json.dumps(schema))  # key order matters: it orders properties


class GrammarPool:
    """Parsed llama.cpp grammar samplers, one per GBNF text and vocabulary, cloned per
    request (a grammar sampler holds its parse state, so a request needs its own).

    ``llama_sampler_init_grammar`` answers NULL for a grammar llama.cpp cannot parse: that is
    a ``ValueError`` here, at compile time, never a crash mid-generation."""

    def __init__(self, vocab: Any) -> None:
        self.vocab = vocab
        self._parsed: dict[str, Any] = {}

    def sampler(self, gbnf: str) -> Any:
        """A fresh grammar sampler (the caller frees it with :func:`free_sampler`)."""
        import llama_cpp

        parsed = self._parsed.get(gbnf)
        if parsed is None:
            parsed = llama_cpp.llama_sampler_init_grammar(self.vocab, gbnf.encode(), b"root")
            if not parsed:
                raise ValueError("llama.cpp cannot parse the grammar compiled from it")
            if len(self._parsed) >= 128:  # bounded: drop the oldest
                free_sampler(self._parsed.pop(next(iter(self._parsed))))
            self._parsed[gbnf] = parsed
        return llama_cpp.llama_sampler_clone(parsed)


def free_sampler(sampler: Any) -> None:
    import llama_cpp

    if sampler:
        llama_cpp.llama_sampler_free(sampler)


class GrammarMask:
    """A request's grammar sampler (it owns it) applied to raw logits: the tokens the grammar
    forbids next at -inf.  llama.cpp's own sampling chain would pick a token as well; OWLLM
    picks it (greedy, or its nucleus sampler) from the masked logits."""

    def __init__(self, sampler: Any, n_vocab: int) -> None:
        import llama_cpp
        import numpy as np

        self.sampler = sampler
        self.data = (llama_cpp.llama_token_data * n_vocab)()
        self.view = np.ctypeslib.as_array(self.data)
        self.ids = np.arange(n_vocab, dtype=np.int32)
        self.array = llama_cpp.llama_token_data_array(data=self.data, size=n_vocab,
                                                      selected=-1, sorted=False)
        self.single = (llama_cpp.llama_token_data * 1)()

    def apply(self, logits: Any) -> Any:
        import llama_cpp
        import numpy as np

        self.view["id"] = self.ids
        self.view["logit"] = logits
        self.view["p"] = 0.0
        self.array.size, self.array.selected, self.array.sorted = len(self.ids), -1, False
        llama_cpp.llama_sampler_apply(self.sampler, ctypes.byref(self.array))
        out = np.full(len(self.ids), -np.inf)
        size = int(self.array.size)
        out[self.view["id"][:size]] = self.view["logit"][:size]
        return out

    def allows(self, token: int) -> bool:
        """Whether the grammar accepts ``token`` next: one candidate checked instead of the
        whole vocabulary (llama.cpp's own sampler checks its pick first the same way)."""
        import llama_cpp

        one = self.single
        one[0].id, one[0].logit, one[0].p = token, 0.0, 0.0
        array = llama_cpp.llama_token_data_array(data=one, size=1, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(self.sampler, ctypes.byref(array))
        return bool(array.size == 1 and one[0].logit == 0.0)

    def accept(self, token: int) -> None:
        import llama_cpp

        llama_cpp.llama_sampler_accept(self.sampler, token)

    def free(self) -> None:
        """Free the sampler now (the generation's end); also done when garbage-collected,
        for a mask whose generation never started."""
        sampler, self.sampler = self.sampler, None
        free_sampler(sampler)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit llama_cpp may be gone
            self.free()

"""The parity gate: greedy completions (completions endpoint, temperature 0) of fixed prompts
on two models must agree on their first ``min_prefix_tokens`` tokens.

The comparison is :func:`owllm.conformance.greedy_parity` (token lists where both endpoints
report ``logprobs.tokens``, byte-fallback renderings made one; else the texts); this module
adds the threshold and the report: the first divergence position over all prompts and, for
each prompt that diverges, both texts.

Float weights on both sides (float32, or the demo's f16 GGUF) are held to
``min_prefix_tokens``.  A quantized GGUF (``backend: llamacpp`` with ``quant``) rounds every
weight matrix, which moves logits by more than the gap between the top two tokens sooner or
later, so it gets its own tolerance: ``quantized_min_prefix_tokens`` when set, else a share
of ``min_prefix_tokens`` by bits per weight (:data:`QUANT_SHARE`; docs/decisions.md,
"Quality gates", says what is expected and why).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from owllm.checks import ParityCheck
from owllm.conformance import PromptParity, Target, greedy_parity
from owllm.conformance.parity import PROMPTS

#: The share of ``min_prefix_tokens`` a quantized GGUF must still agree on, by the first
#: characters of its quant type (longest match wins): 8 and 6 bits keep half, 5 and 4 bits a
#: quarter, 3 and 2 bits nothing (the gate reports the divergence, it cannot fail on it).
QUANT_SHARE = {"q8": 0.5, "q6": 0.5, "q5": 0.25, "q4": 0.25, "q3": 0.0, "q2": 0.0}


def required_prefix(check: ParityCheck, quants: Sequence[str | None]) -> tuple[int, str]:
    """(tokens that must agree, why): ``min_prefix_tokens``, or the quantized tolerance when
    either side is a quantized GGUF (the coarser quant decides)."""
    quantized = [q.lower() for q in quants if q]
    if not quantized:
        return check.min_prefix_tokens, "float weights"
    if check.quantized_min_prefix_tokens is not None:
        return check.quantized_min_prefix_tokens, f"quantized ({', '.join(quantized)}): " \
                                                  "quantized_min_prefix_tokens"
    share = min(next((v for k, v in sorted(QUANT_SHARE.items(), key=lambda kv: -len(kv[0]))
                      if q.startswith(k)), 0.0) for q in quantized)
    return math.ceil(check.min_prefix_tokens * share), \
        f"quantized ({', '.join(quantized)}): {share:.0%} of min_prefix_tokens"


@dataclass(frozen=True)
class ParityReport:
    """Both models' greedy continuations of each prompt and the verdict."""

    model: str
    other: str
    results: tuple[PromptParity, ...]
    required: int
    why: str = "float weights"
    generated: int = 16

    @property
    def first_divergence(self) -> int | None:
        """The earliest token position where any prompt diverges (None: all agree)."""
        found = [r.diverges_at for r in self.results if r.diverges_at is not None]
        return min(found) if found else None

    @property
    def ok(self) -> bool:
        first = self.first_divergence
        return bool(self.results) and (first is None or first >= self.required)

    def measured(self) -> str:
        first = self.first_divergence
        agree = sum(r.agrees for r in self.results)
        return (f"{agree}/{len(self.results)} prompts agree over {self.generated} tokens; "
                f"first divergence: {'none' if first is None else f'token {first}'}")

    def threshold(self) -> str:
        return f"first {self.required} tokens agree ({self.why})"

    def table(self) -> str:
        first = self.first_divergence
        lines = [f"greedy parity {self.model} vs {self.other}: {'PASS' if self.ok else 'FAIL'}",
                 f"  required: the first {self.required} tokens agree ({self.why}); "
                 f"generated {self.generated}",
                 f"  first divergence: {'none' if first is None else f'token {first}'}"]
        for r in self.results:
            if r.agrees:
                lines.append(f"  {r.prompt!r}: {len(r.tokens_a)} tokens agree")
                continue
            lines += [f"  {r.prompt!r}: diverges at token {r.diverges_at} (character "
                      f"{r.char_at})",
                      f"    {self.model}: {r.text_a!r}",
                      f"    {self.other}: {r.text_b!r}"]
        return "\n".join(lines)

    def junit_properties(self) -> list[tuple[str, str]]:
        first = self.first_divergence
        return [("first_divergence", "none" if first is None else str(first)),
                ("min_prefix_tokens", str(self.required)),
                ("parity_with", self.other),
                ("prompts_agree", f"{sum(r.agrees for r in self.results)}/"
                                  f"{len(self.results)}")]


def run_parity(model: Target, other: Target, check: ParityCheck, *, name: str, other_name: str,
               quants: Sequence[str | None] = ()) -> ParityReport:
    """Compare ``model`` with ``other`` (the check's ``with``) on the check's prompts."""
    required, why = required_prefix(check, quants)
    tokens = max(check.generate_tokens, required, 1)
    results = greedy_parity(model, other, check.prompts or PROMPTS, tokens)
    return ParityReport(name, other_name, tuple(results), required, why, tokens)

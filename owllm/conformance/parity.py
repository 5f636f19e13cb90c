"""Greedy parity of two endpoints serving the same weights (issue #15, and #17 later with
thresholds): the same prompts through the completions endpoint at temperature 0 must give
the same tokens.  A divergence is reported with its first token position and both texts.

Tokens are the pieces each endpoint reports: ``logprobs.tokens`` where it returns them,
else its streamed deltas (one per token on the servers OWLLM runs).  Where both endpoints
report ``logprobs.tokens``, the token lists are compared, with a byte-fallback token that
is not valid UTF-8 on its own (OWLLM's servers render it ``U+FFFD``, vLLM ``""``, others
``bytes:\\xNN``) counted as equal to any other such rendering at the same place: the
tokens agree even where the endpoints render a broken byte differently (vLLM's non-streamed
text even drops what follows one: see docs/conformance.md).  Otherwise equal texts agree,
and unequal ones are reported at the first character that differs and the token holding
it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from owllm.conformance._core import Target, ok_json

PROMPTS = ("The capital of France is", "Once upon a time", "1, 2, 3, 4,")
MAX_TOKENS = 16
BYTE = "<byte>"  # a byte-fallback token that is not UTF-8 on its own, however rendered


def first_divergence(a: Sequence[str], b: Sequence[str]) -> int | None:
    """The first index where the two token lists differ (a shorter list differs at its
    end); None when they are equal."""
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def _normalized(token: str) -> str:
    """A token piece with every rendering of a broken UTF-8 byte made one."""
    return BYTE if not token or "\ufffd" in token or token.startswith("bytes:") else token


def token_divergence(a: Sequence[str], b: Sequence[str]) -> int | None:
    """:func:`first_divergence` of two ``logprobs.tokens`` lists, byte renderings made one."""
    return first_divergence([_normalized(t) for t in a], [_normalized(t) for t in b])


def _token_at(tokens: Sequence[str], offset: int) -> int:
    """The index of the piece of ``tokens`` that holds character ``offset`` of their text
    (``len(tokens)`` past the end)."""
    end = 0
    for index, token in enumerate(tokens):
        end += len(token)
        if offset < end:
            return index
    return len(tokens)


def text_divergence(a: Sequence[str], b: Sequence[str], text_a: str | None = None,
                    text_b: str | None = None) -> tuple[int, int] | None:
    """Where two continuations first differ: (token index, character offset), None when
    their texts are equal.  The texts are the pieces joined unless given (an endpoint's
    non-streamed text).  Endpoints cut text into pieces differently (one streams two tokens
    as one piece where a UTF-8 character is incomplete), so the texts are compared and the
    token is the one holding the first differing character in the finer of the two lists."""
    x = "".join(a) if text_a is None else text_a
    y = "".join(b) if text_b is None else text_b
    if x == y:
        return None
    offset = next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q),
                  min(len(x), len(y)))
    return max(_token_at(a, offset), _token_at(b, offset)), offset


@dataclass(frozen=True)
class PromptParity:
    """One prompt's greedy continuations on both endpoints."""

    prompt: str
    tokens_a: tuple[str, ...]
    tokens_b: tuple[str, ...]
    diverges_at: int | None  # the first divergent token, None when they agree
    char_at: int | None = None  # the first divergent character of the text
    text_a: str = ""
    text_b: str = ""

    @property
    def agrees(self) -> bool:
        return self.diverges_at is None

    def describe(self, name_a: str = "a", name_b: str = "b") -> str:
        if self.agrees:
            return f"{self.prompt!r}: {len(self.tokens_a)} tokens agree"
        return (f"{self.prompt!r}: diverges at token {self.diverges_at} (character "
                f"{self.char_at}): "
                f"{name_a} {self.text_a!r} vs {name_b} {self.text_b!r}")


def greedy_tokens(target: Target, prompt: str, max_tokens: int = MAX_TOKENS
                  ) -> tuple[str, list[str], bool]:
    """The greedy continuation of ``prompt``: its (non-streamed) text, its token pieces
    (``logprobs.tokens``, else the streamed deltas), and whether they are tokens."""
    body = {"model": target.model, "prompt": prompt, "max_tokens": max_tokens,
            "temperature": 0, "logprobs": 1}
    choice = ok_json(target.post("/v1/completions", body))["choices"][0]
    text = str(choice.get("text") or "")
    tokens = (choice.get("logprobs") or {}).get("tokens")
    if tokens:
        return text, [str(t) for t in tokens], True
    body.pop("logprobs")
    pieces: list[str] = []
    with target.http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for c in json.loads(line[6:]).get("choices") or []:
                    if c.get("text"):
                        pieces.append(c["text"])
    return text, pieces, False


def greedy_parity(a: Target, b: Target, prompts: Sequence[str] = PROMPTS,
                  max_tokens: int = MAX_TOKENS) -> list[PromptParity]:
    """Each prompt's greedy continuation on ``a`` and ``b`` and where they first diverge."""
    out = []
    for prompt in prompts:
        (xa, ta, tokens_a), (xb, tb, tokens_b) = greedy_tokens(a, prompt, max_tokens), \
            greedy_tokens(b, prompt, max_tokens)
        if tokens_a and tokens_b:
            # The token lists decide where they diverge: vLLM's text drops what follows a
            # byte token, so its text would put the divergence too early (issue 17).  Equal
            # texts still agree (a token rendered two ways).
            token = token_divergence(ta, tb)
            if token is None or text_divergence(ta, tb, xa, xb) is None:
                token, char = None, None
            else:
                char = len("".join(ta[:token]))
        else:
            token, char = text_divergence(ta, tb, xa, xb) or (None, None)
        out.append(PromptParity(prompt, tuple(ta), tuple(tb), token, char, xa, xb))
    return out

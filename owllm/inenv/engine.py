"""What an engine gives OWLLM's OpenAI app (``openai_app``): the contract between the HTTP
layer and whatever turns a prompt into tokens (transformers, llama.cpp, ...).

Standard library only; in-env module (it never imports the host-side ``owllm``).  The app
does everything OpenAI-specific (request validation, ``n``, tools, stop-free envelopes,
logprob shapes, streaming); an engine only tokenizes, builds chat prompts, compiles
constraints and generates one sequence at a time.  Keep changes additive: other engines
implement this protocol (``transformers_engine.Engine``, the llama.cpp engine).

Text rules every engine follows, so that all backends answer alike:

* ``Step.text`` is *settled* text only: never the start of a stop string that may still
  complete, never half a UTF-8 character.  The stop string itself is never in the text.
* Invalid UTF-8 (a byte-fallback token the model ends a sequence with, or bytes that never
  form a character) is rendered as ``bytes.decode("utf-8", "replace")`` renders it: one
  U+FFFD per maximal invalid subsequence; an incomplete sequence is held back until a byte
  completes it or proves it invalid (or the generation ends).
* Temperature 0 is greedy: the argmax of the (constrained) logits, no other sampling tweak.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Engine", "SamplingParams", "Step", "TokenLogprob", "TopToken"]


@dataclass(frozen=True)
class SamplingParams:
    """How to generate one sequence (the app has validated and defaulted every field)."""

    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0  # (0, 1]: the most likely token is always kept
    seed: int | None = None  # None: a fresh random seed
    stops: tuple[str, ...] = ()  # at most 4, never in the output
    # None: no logprobs; k >= 0: the chosen token's logprob and the k most likely tokens'
    top_logprobs: int | None = None


@dataclass(frozen=True)
class TopToken:
    """One of the most likely tokens at a step."""

    token: str  # its bytes decoded with errors="replace"
    bytes: bytes  # the token's exact bytes (a byte-fallback token: its one byte)
    # natural log of its probability: the model's logits with the constraint's mask applied,
    # before temperature and top_p; never -inf or nan (JSON has no such number)
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """The token generated at a step, with its logprob and the top alternatives."""

    token: str
    bytes: bytes
    logprob: float
    top: tuple[TopToken, ...] = ()  # most likely first, ``top_logprobs`` of them


@dataclass(frozen=True)
class Step:
    """One record of a generation: one per generated token, then the last carries ``finish``.

    ``text``: newly settled text (may be ""); ``tokens``: completion tokens so far;
    ``finish``: None until the last record, then "stop" (EOS, a stop string, a complete
    constrained value) or "length" (max_tokens); ``logprob``: the token generated at this
    step when ``top_logprobs`` was asked (None on a record that generated no token, such as
    the EOS that ends it: EOS is not part of the output).
    """

    text: str
    tokens: int
    finish: str | None = None
    logprob: TokenLogprob | None = None


class Engine(Protocol):
    """A loaded model behind the OpenAI app.

    ``config``: the server's config dict; the app reads ``model_id`` (the id requests must
    name and responses carry) and ``generation`` (defaults: max_tokens, temperature, top_p).
    ``ready``: False until loaded and warmed up (``/health`` is 503 until then).
    ``lock``: held by the app while it consumes a generation (one sequence at a time).
    """

    config: dict[str, Any]
    ready: bool
    lock: threading.Lock

    @property
    def max_len(self) -> int:
        """The context length in tokens (prompt + completion)."""
        ...

    @property
    def max_prompt_chars(self) -> int:
        """A prompt longer than this (characters) cannot fit: refused before tokenizing."""
        ...

    def encode(self, prompt: str, chat: bool) -> list[int]:
        """Token ids of a prompt; ``chat``: a rendered chat template (it holds its own BOS)."""
        ...

    def chat_prompt(self, messages: list[dict[str, Any]],
                    tools: list[dict[str, Any]] | None) -> str:
        """The prompt of OpenAI ``messages`` (plain dicts, ``tool_calls`` and ``role: tool``
        included) with ``tools`` described; raises ``ApiError`` 400 for what cannot render."""
        ...

    def matcher(self, response_format: dict[str, Any] | None,
                forced: dict[str, Any] | None = None) -> Any:
        """A constraint for one ``generate`` (it keeps state: one per sequence): the JSON
        schema of ``response_format`` or, when given, ``forced`` (a tool-call schema); None
        when nothing constrains the output.
        An unusable schema is an ``ApiError`` 400 naming ``response_format``."""
        ...

    def generate(self, prompt_ids: list[int], sampling: SamplingParams,
                 matcher: Any) -> Iterator[Step]:
        """Generate one sequence (lazily: the caller consumes it under ``lock``)."""
        ...

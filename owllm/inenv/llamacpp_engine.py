"""The llama.cpp engine of OWLLM's server: a GGUF model through ``llama_cpp.Llama``, driven
token by token so that it behaves like the transformers engine.  No HTTP here (that is
``openai_app``, shared by every engine).

In-env module (``owllm.inenv``): llama_cpp, numpy and jinja2 come from the ``llamacpp`` env;
it never imports the host-side ``owllm``.

Why not llama-cpp-python's own completion API: its defaults are not OpenAI's (repeat penalty
1.1, top_k 40, min_p 0.05 stay on at any temperature), it counts usage by re-tokenizing the
text, cuts ``max_tokens`` late and keeps a stop string in the text.  Here:

* Greedy is argmax of the raw logits at temperature 0; above it, temperature and top_p only
  (OpenAI has no repeat penalty or top_k), from a seeded numpy generator.
* Chat prompts render the GGUF's ``tokenizer.chat_template`` (embedded by ``gguf_convert``)
  with jinja2 the way transformers does, so both engines build the same prompt tokens.
* Text is the tokens' bytes decoded with errors="replace" (``engine``'s rule, the same as the
  transformers engine's), less the leading space a SentencePiece decoder drops.
* Constrained output (response_format, forced tool calls) masks the logits with llama.cpp's
  grammar sampler (``llamacpp_grammar``); the end of the budget steers to a closing token as
  the transformers engine does.
* Callers hold ``lock`` while they consume a generation (one at a time: one KV cache).
"""

from __future__ import annotations

import ctypes
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .engine import SamplingParams, Step, TokenLogprob, TopToken
from .llamacpp_grammar import GrammarMask, GrammarPool, cached_grammar
from .openai_helpers import (
    ApiError,
    TailDecoder,
    chat_messages,
    first_stop,
    format_schema,
    inside_string,
    prompt_char_limit,
    render_chat,
    safe_prefix,
)

DEFAULT_N_CTX = 2048


def hf_template(source: str) -> Any:
    """A chat template compiled as transformers compiles it (sandboxed, trim/lstrip blocks,
    loop controls, its ``tojson`` and ``raise_exception``)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
    return env.from_string(source)


@dataclass
class LlamaCppEngine:
    config: dict[str, Any]
    llm: Any = None
    vocab: Any = None
    pieces: list[bytes] = field(default_factory=list)  # each token's bytes (specials: b"")
    strip_first: bool = False  # SentencePiece: the space that begins a text is dropped
    special: dict[str, str] = field(default_factory=dict)  # bos_token, eos_token, ...
    template: Any = None
    grammars: Any = None
    closers: tuple[list[int], list[int]] = ([], [])  # (inside a string, outside one)
    longest_token: int = 1
    ready: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def max_len(self) -> int:
        return int(self.config.get("n_ctx") or self.config.get("max_model_len")
                   or DEFAULT_N_CTX)

    @property
    def max_prompt_chars(self) -> int:
        return prompt_char_limit(self.max_len, self.longest_token)

    def load(self, **overrides: Any) -> None:
        """Load the GGUF (``overrides``: llama_cpp.Llama arguments from ``server_args``)."""
        import llama_cpp

        cfg = self.config
        kwargs = {"n_ctx": self.max_len, "verbose": False,
                  **(cfg.get("model_settings") or {}), **overrides}
        print(f"owllm-server: loading {cfg['model_path']} with llama.cpp", flush=True)
        self.llm = llama_cpp.Llama(cfg["model_path"], **kwargs)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self._read_vocab(llama_cpp)
        self.grammars = GrammarPool(self.vocab)
        source = self.llm.metadata.get("tokenizer.chat_template")
        self.template = hf_template(source) if source else None
        print("owllm-server: warm-up generation", flush=True)
        try:
            grammar = self.matcher({"type": "json_object"})
        except Exception as exc:  # plain generation still works; constrained requests 400
            print(f"owllm-server: constrained decoding unavailable: {exc!r}", flush=True)
            grammar = None
        warm = SamplingParams(max_tokens=2, seed=0, top_logprobs=1)
        for _ in self.generate(self.encode("Hello", False), warm, grammar):
            pass
        self.ready = True
        print("owllm-server: ready", flush=True)

    def _read_vocab(self, lib: Any) -> None:
        """Each token's text, kind and length; the JSON closers; the special token texts."""
        unseen = lib.LLAMA_TOKEN_ATTR_CONTROL | lib.LLAMA_TOKEN_ATTR_UNKNOWN | \
            lib.LLAMA_TOKEN_ATTR_UNUSED
        buffer = ctypes.create_string_buffer(256)
        pieces, longest = [], 1
        for token in range(lib.llama_vocab_n_tokens(self.vocab)):
            attr = lib.llama_vocab_get_attr(self.vocab, token)
            size = lib.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, False)
            if size < 0:  # a longer piece: -size bytes
                buffer = ctypes.create_string_buffer(-size)
                size = lib.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0,
                                                False)
            pieces.append(buffer.raw[:max(0, size)] if not attr & unseen else b"")
            longest = max(longest, len(lib.llama_vocab_get_text(self.vocab, token) or b""))
        self.pieces, self.longest_token = pieces, longest
        self.strip_first = lib.llama_vocab_type(self.vocab) == lib.LLAMA_VOCAB_TYPE_SPM and \
            str(self.llm.metadata.get("tokenizer.ggml.add_space_prefix", "true")) == "true"
        inside: list[tuple[int, int, int]] = []
        outside: list[tuple[int, int, int]] = []
        for token, piece in enumerate(pieces):  # as openai_helpers.closer_tokens ranks them
            text = piece.decode("utf-8", "replace")
            if not text or set(text) - set('"}],'):
                continue
            rank = (text.count(","), -len(text), token)
            if text.startswith('"') and '"' not in text[1:]:
                inside.append(rank)
            elif '"' not in text:
                outside.append(rank)
        self.closers = ([r[-1] for r in sorted(inside)], [r[-1] for r in sorted(outside)])

        def text_of(token: int) -> str:
            if token < 0:
                return ""
            return (lib.llama_vocab_get_text(self.vocab, token) or b"").decode("utf-8",
                                                                              "replace")

        meta = self.llm.metadata or {}
        self.special = {"bos_token": text_of(lib.llama_vocab_bos(self.vocab)),
                        "eos_token": text_of(lib.llama_vocab_eos(self.vocab)),
                        "unk_token": text_of(int(meta.get("tokenizer.ggml.unknown_token_id",
                                                          -1))),
                        "pad_token": text_of(int(meta.get("tokenizer.ggml.padding_token_id",
                                                          -1)))}

    # -- prompts ---------------------------------------------------------------------------

    def decode(self, ids: list[int]) -> str:
        """Text of tokens: their bytes decoded with errors="replace" (see ``engine``), less
        the space a SentencePiece text begins with (as Hugging Face's decoder drops it)."""
        text = b"".join(self.pieces[i] for i in ids).decode("utf-8", "replace")
        return text[1:] if self.strip_first and text.startswith(" ") else text

    def chat_prompt(self, messages: list[dict[str, Any]],
                    tools: list[dict[str, Any]] | None) -> str:
        """The prompt of a chat, built exactly as the transformers engine builds it (tools in
        a system message, the configured system prompt, the model's chat template)."""
        messages = chat_messages(messages, tools, self.config.get("system_prompt") or "")
        if self.config.get("model_type", "instruct") == "base" or self.template is None:
            return "\n".join(f"{m['role']}: {m.get('content') or ''}" for m in messages) + \
                "\nassistant:"
        return render_chat(lambda: self.template.render(
            messages=messages, tools=None, documents=None, add_generation_prompt=True,
            **self.special))

    def encode(self, prompt: str, chat: bool) -> list[int]:
        """Token ids; special token texts (``<s>``) parse as their tokens, as in transformers.
        A chat template holds the bos token already; a plain prompt gets the model's."""
        ids: list[int] = self.llm.tokenize(prompt.encode("utf-8", "surrogatepass"),
                                           add_bos=not chat, special=True)
        return ids

    # -- constrained decoding ----------------------------------------------------------------

    def matcher(self, response_format: dict[str, Any] | None,
                forced: dict[str, Any] | None = None) -> Any:
        """A grammar mask for the response format (or a forced tool-call schema), None when
        the output is free; one per generation (it holds the grammar's parse state)."""
        if forced is not None:
            schema = forced
        elif not response_format or response_format.get("type") == "text":
            return None
        else:
            schema = format_schema(response_format)
        # a forced tool call's schema holds the tools' parameters: name those
        where, param = ("the tools' parameters", "tools") if forced is not None else \
            ("response_format.json_schema.schema", "response_format")
        try:
            return GrammarMask(self.grammars.sampler(cached_grammar(schema)), len(self.pieces))
        except RecursionError:
            raise ApiError(400, f"{where}: nested too deeply", param) from None
        except Exception as exc:  # the converter raises bare Exceptions and others
            raise ApiError(400, f"{where} cannot be compiled to a llama.cpp grammar: {exc}",
                           param) from exc

    # -- generation --------------------------------------------------------------------------

    def _start(self, prompt_ids: list[int]) -> None:
        """Evaluate the prompt, reusing the KV cache of the previous request's common prefix
        (at least the last prompt token is evaluated again, for its logits)."""
        llm = self.llm
        cached = llm.input_ids[:llm.n_tokens].tolist()
        keep = 0
        # a recurrent state cannot be cut back to a prefix: start over
        partial = not (getattr(llm, "_is_recurrent", False) or getattr(llm, "_is_hybrid", False))
        limit = min(len(cached), len(prompt_ids) - 1) if partial else 0
        while keep < limit and cached[keep] == prompt_ids[keep]:
            keep += 1
        if keep == 0:
            llm.reset()
        llm.n_tokens = keep
        llm.eval(prompt_ids[keep:])

    def _logits(self) -> Any:
        """The last position's logits: a float32 view of llama.cpp's buffer, valid until the
        next ``eval`` (no per-token copy: greedy needs only the argmax; sampling, masks and
        logprobs work on float64 copies of their own)."""
        import llama_cpp

        pointer = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(len(self.pieces),))

    def _logprob(self, logits: Any, token: int, k: int) -> TokenLogprob:
        """The chosen token's logprob and the ``k`` most likely tokens' (``engine``: the
        model's logits with a constraint's mask applied; forbidden tokens are left out of
        the top ones, -inf being no JSON number, and a chosen one is -9999.0 as OpenAI
        writes it)."""
        logits = np.asarray(logits, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            shifted = logits - np.max(logits)
            logprobs = shifted - np.log(np.sum(np.exp(shifted)))

        def entry(t: int) -> tuple[str, bytes, float]:
            data, value = self.pieces[t], float(logprobs[t])
            return data.decode("utf-8", "replace"), data, value if value > -9999 else -9999.0

        top: tuple[TopToken, ...] = ()
        if k > 0:
            k = min(k, len(logprobs))
            head = np.argpartition(-logprobs, k - 1)[:k]
            order = head[np.argsort(-logprobs[head], kind="stable")]
            top = tuple(TopToken(*entry(int(t))) for t in order if np.isfinite(logprobs[t]))
        return TokenLogprob(*entry(token), top=top)

    def generate(self, prompt_ids: list[int], sampling: SamplingParams,
                 matcher: Any) -> Iterator[Step]:
        """One record per generated token, the last with the finish reason (see ``engine``).

        Over 60 lines on purpose: it is the transformers engine's loop step for step (masking,
        closing steer, stop search, held-back text), which keeps the two engines comparable."""
        import llama_cpp

        max_tokens, stops, k = sampling.max_tokens, list(sampling.stops), sampling.top_logprobs
        seed = sampling.seed
        rng = np.random.default_rng(seed % 2**64 if seed is not None else time.time_ns())
        eos = llama_cpp.llama_vocab_eos(self.vocab)
        mask: GrammarMask | None = matcher
        decoder = TailDecoder(self.decode)
        emitted = ""
        # The last tokens of a constrained budget go to closing the JSON (_closing_token);
        # logprobs under a constraint need the whole mask (no pick-first shortcut).
        reserve = min(max_tokens // 2, max(8, max_tokens // 3))
        try:
            self._start(prompt_ids)
            for step in range(max_tokens):
                raw = logits = self._logits()  # masked below when constrained
                token = None
                if mask is not None and sampling.top_p >= 1.0 and k is None and \
                        max_tokens - step > reserve:
                    # The model's own pick, when the grammar takes it, is what the masked
                    # logits give too (argmax; or a draw: rejected picks are drawn again from
                    # the masked distribution, which keeps it exact): one grammar check
                    # instead of a whole-vocabulary mask per token.
                    token = sample(raw, sampling.temperature, 1.0, rng)
                    if not mask.allows(token):
                        token = None
                if mask is not None and token is None:
                    logits = mask.apply(raw)
                    if not np.isfinite(logits).any():  # nothing may follow: complete
                        yield Step("", step, "stop")
                        return
                    if max_tokens - step <= reserve:
                        token = self._closing_token(logits, decoder.full_text(), eos)
                if token is None:
                    token = sample(logits, sampling.temperature, sampling.top_p, rng)
                if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                    yield Step("", step, "stop")
                    return
                if mask is not None:
                    mask.accept(token)
                logprob = self._logprob(logits, token, k) if k is not None else None
                seen = len(decoder.text)  # settled text, searched for stops already
                decoder.add(token)
                text = decoder.full_text()
                cut = first_stop(text, stops, seen)
                if cut is not None:
                    yield Step(text[len(emitted):cut], len(decoder.ids), "stop", logprob)
                    return
                # emit settled text only, less its end where a stop string may still begin
                safe = safe_prefix(decoder.text, stops)
                yield Step(safe[len(emitted):], len(decoder.ids), None, logprob)
                emitted = max(safe, emitted, key=len)
                if step + 1 < max_tokens:
                    self.llm.eval([token])
            yield Step(decoder.full_text()[len(emitted):], len(decoder.ids), "length")
        finally:
            if mask is not None:
                mask.free()

    def _closing_token(self, logits: Any, text: str, eos: int) -> int | None:
        """Near the end of a constrained budget: EOS when the value is complete, else a
        token closing the open string, else ``}``/``]``, else ``,`` (see the transformers
        engine's ``_closing_token``); only tokens the grammar allows."""
        if np.isfinite(logits[eos]):
            return eos
        for token in self.closers[0 if inside_string(text) else 1]:
            if np.isfinite(logits[token]):
                return token
        return None


def sample(logits: Any, temperature: float, top_p: float, rng: Any) -> int:
    """Greedy (argmax) at temperature 0; else softmax(logits / temperature) in float64, cut
    to the top_p nucleus with the most likely token always kept (a top_p of 1e-300 is
    greedy); a distribution that is still not finite falls back to the argmax, never nan.
    Only the nucleus is sorted (a whole 150k vocabulary per token costs milliseconds)."""
    greedy = int(np.argmax(logits))
    if temperature <= 0:
        return greedy
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        scaled = np.asarray(logits, dtype=np.float64) / temperature
        probs = np.exp(scaled - np.max(scaled))
        total = float(probs.sum())
        order = None  # None: every token, in vocabulary order
        if top_p < 1.0 and np.isfinite(total):
            head = min(len(probs), 256)  # the nucleus is usually among the top few hundred
            order = np.argpartition(-probs, head - 1)[:head]
            if probs[order].sum() < top_p * total:
                order = np.arange(len(probs))
            order = order[np.argsort(-probs[order], kind="stable")]
            ranked = probs[order]
            keep = np.cumsum(ranked) - ranked < top_p * total
            keep[0] = True
            order = order[keep]
        kept = probs if order is None else probs[order]
        total = float(kept.sum())
    if not np.isfinite(kept).all() or not total > 0:
        return greedy
    # inverse CDF: one uniform draw (rng.choice validates p: 25 ms for 150k tokens)
    cumulative = np.cumsum(kept)
    at = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    at = min(at, len(kept) - 1)
    return at if order is None else int(order[at])

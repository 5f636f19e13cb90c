"""The transformers engine of OWLLM's server: model loading, generation, constrained decoding
and stop handling.  No HTTP here (that is ``openai_app``): it implements the ``engine.Engine``
protocol, turning a prompt into per-token ``engine.Step`` records.

In-env module (``owllm.inenv``): torch, transformers, llguidance (peft / bitsandbytes when
the model needs them) come from the model's env; it never imports the host-side ``owllm``.

* Generation is greedy at temperature 0, else sampled (top_p, a seed).  Stop strings cut the
  output; text that may still become a stop string (or half a UTF-8 character) is held back.
  Text is the tokens' bytes decoded with errors="replace" (one U+FFFD per invalid sequence,
  not the byte-fallback decoder's one per byte); logprobs are the model's, with a
  constraint's mask applied (a token the grammar forces has logprob 0), before temperature.
* ``response_format`` json_object / json_schema is enforced by llguidance with non-flexible
  whitespace, so a random model cannot wander in blanks.  The last third of a constrained
  budget (at most half) steers to the shortest legal end: EOS when the value is complete,
  else close the open string, else ``}``/``]``, else ``,``; so a random model's free strings
  still end in valid JSON when the budget allows it (else ``length``).
* Callers hold ``Engine.lock`` while they consume a generation: one request at a time keeps
  the KV cache and the constraint matcher per request simple, and a small CPU/GPU server
  gains nothing from interleaving.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .engine import SamplingParams, Step, TokenLogprob, TopToken
from .openai_helpers import (
    ApiError,
    TailDecoder,
    byte_piece,
    chat_messages,
    closer_tokens,
    first_stop,
    format_schema,
    inside_string,
    prompt_char_limit,
    render_chat,
    safe_prefix,
)

MAX_COMPILED = 128  # distinct schemas whose compiled matcher is kept
BIT_SHIFTS = torch.arange(32, dtype=torch.int32)  # a bitmask word's bits, lowest first


@dataclass
class Engine:
    config: dict[str, Any]
    model: Any = None
    tokenizer: Any = None
    ll_tokenizer: Any = None
    closers: tuple[list[int], list[int]] = ([], [])  # (inside a string, outside one)
    device: str = "cpu"
    longest_token: int = 1  # characters of the longest vocabulary entry (prompt_char_limit)
    token_bytes: list[bytes] = field(default_factory=list)  # per token id (_token_table)
    strip_first: bool = False  # the decoder drops the space that begins a text
    ready: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    # compiled matchers by schema JSON (``matcher``): each request gets a copy of one
    compiled: dict[str, Any] = field(default_factory=dict)
    compile_lock: threading.Lock = field(default_factory=threading.Lock)

    @functools.cached_property
    def _cache_arg(self) -> str:
        """transformers 5.x renamed ``past_key_values`` to ``cache``; accept both."""
        import inspect

        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") \
            else self.model  # PeftModel.forward takes **kwargs: look at the model under it
        params = inspect.signature(base.forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    @property
    def max_prompt_chars(self) -> int:
        return prompt_char_limit(self.max_len, self.longest_token)

    @property
    def max_len(self) -> int:
        configured = self.config.get("max_model_len")
        native = getattr(self.model.config, "max_position_embeddings", 2048)
        return int(min(configured, native) if configured else native)

    def load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg = self.config
        device = cfg.get("device") or "auto"
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" \
            else device
        dtype_name = cfg.get("dtype") or "auto"
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                 "float16": torch.float16}.get(dtype_name)
        if dtype is None:
            dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        print(f"owllm-server: loading {cfg['model_path']} on {self.device} ({dtype})",
              flush=True)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg["model_path"])
        # Raw vocabulary strings are at least as long as the text they decode to (byte
        # tokens such as <0x0A> or byte-level BPE's one char per byte only overcount).
        self.longest_token = max((len(t) for t in self.tokenizer.get_vocab()), default=1)
        kwargs: dict[str, Any] = {"dtype": dtype}
        if cfg.get("use_4bit"):
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
            kwargs["device_map"] = self.device
        model = AutoModelForCausalLM.from_pretrained(cfg["model_path"], **kwargs)
        if not cfg.get("use_4bit"):
            model = model.to(self.device)
        if cfg.get("adapter_dir"):
            from peft import PeftModel

            print(f"owllm-server: loading LoRA adapter {cfg['adapter_dir']}", flush=True)
            model = PeftModel.from_pretrained(model, cfg["adapter_dir"])
        self.model = model.eval()
        try:  # before _token_table: its bytes come from llguidance's tokenizer
            import llguidance.hf

            self.ll_tokenizer = llguidance.hf.from_tokenizer(self.tokenizer)
            self.closers = closer_tokens(self.ll_tokenizer)
        except Exception as exc:  # plain generation still works; constrained requests 500
            print(f"owllm-server: llguidance cannot load the tokenizer: {exc!r}", flush=True)
        self._token_table()
        print("owllm-server: warm-up forward pass and generation", flush=True)
        # Run the real generation path once, constrained (KV cache, sampling, logprobs),
        # so that the first request is as fast as the next ones.
        try:
            matcher = self.matcher({"type": "json_object"})
        except Exception as exc:  # plain generation still works; constrained requests 500
            print(f"owllm-server: constrained decoding unavailable: {exc!r}", flush=True)
            matcher = None
        for _ in self.generate(self.tokenizer("Hello").input_ids,
                               SamplingParams(max_tokens=2, seed=0, top_logprobs=1), matcher):
            pass
        self.ready = True
        print("owllm-server: ready", flush=True)

    # -- prompts ---------------------------------------------------------------------------

    def chat_prompt(self, messages: list[dict[str, Any]],
                    tools: list[dict[str, Any]] | None) -> str:
        """The prompt of a chat: OpenAI messages (plain dicts), the tools described in a
        system message, the configured system prompt, the model's chat template."""
        messages = chat_messages(messages, tools, self.config.get("system_prompt") or "")
        if self.config.get("model_type", "instruct") == "base" or \
                not getattr(self.tokenizer, "chat_template", None):
            return "\n".join(f"{m['role']}: {m.get('content') or ''}" for m in messages) + \
                "\nassistant:"
        return render_chat(lambda: self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True))

    def encode(self, prompt: str, chat: bool) -> list[int]:
        # A chat template already holds the bos token; a plain prompt gets the tokenizer's.
        ids: list[int] = self.tokenizer(prompt, add_special_tokens=not chat).input_ids
        return ids

    # -- constrained decoding ----------------------------------------------------------------

    def matcher(self, response_format: dict[str, Any] | None,
                forced: dict[str, Any] | None = None) -> Any:
        """An llguidance matcher for the response format (or a forced tool-call schema)."""
        import llguidance.hf

        if forced is not None:
            schema = forced
        elif not response_format or response_format.get("type") == "text":
            return None
        else:
            schema = format_schema(response_format)
        if self.ll_tokenizer is None:
            self.ll_tokenizer = llguidance.hf.from_tokenizer(self.tokenizer)
            self.closers = closer_tokens(self.ll_tokenizer)
        key = json.dumps(schema)  # key order matters: it orders the properties
        # A matcher holds its parse state: a copy of the compiled one (microseconds, where
        # compiling the schema again cost milliseconds per request; issue #18).  Requests
        # ask from several worker threads: the cache is used under its own lock.
        with self.compile_lock:
            compiled = self.compiled.get(key)
            if compiled is None:
                compiled = self._compile(schema)
                if len(self.compiled) >= MAX_COMPILED:  # bounded: drop the oldest
                    self.compiled.pop(next(iter(self.compiled)))
                self.compiled[key] = compiled
            return compiled.deep_copy()

    def _compile(self, schema: dict[str, Any]) -> Any:
        """A fresh matcher of ``schema``'s grammar; a 400 when llguidance cannot use it."""
        import llguidance

        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                schema, defaults={"whitespace_flexible": False})
            is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
                grammar, self.ll_tokenizer)
        except Exception as exc:  # llguidance rejects some schemas while compiling them
            is_error, messages = True, [str(exc)]
        if is_error:
            raise ApiError(400, f"response_format schema is not usable: {messages[0]}",
                           "response_format")
        return llguidance.LLMatcher(self.ll_tokenizer, grammar)

    # -- generation --------------------------------------------------------------------------

    def _token_table(self) -> None:
        """Each token's exact bytes, for text (``_decode``) and logprobs: special tokens are
        empty (they are skipped in text, as ``skip_special_tokens`` does)."""
        tok = self.tokenizer
        special = set(tok.all_special_ids)
        size = max(len(tok), getattr(self.model.config, "vocab_size", 0) or 0)
        table = []
        pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
        for token in range(size):
            piece = pieces[token] if token < len(pieces) else None
            if token in special or piece is None:
                table.append(b"")
            elif (byte := byte_piece(piece)) is not None:  # <0xFF>: not in llguidance
                table.append(bytes([byte]))
            elif self.ll_tokenizer is not None:
                table.append(bytes(self.ll_tokenizer.decode_bytes([token])))
            else:
                table.append(tok.convert_tokens_to_string([piece]).encode("utf-8"))
        self.token_bytes = table
        # SentencePiece decoders drop the space that begins a text ("▁Hi" alone is "Hi"):
        # keep that rule, the bytes of "▁Hi" start with b" ".
        spaced = next((t for t, b in enumerate(table) if len(b) > 1 and b[:1] == b" "
                       and not b[1:2].isspace()), None)
        self.strip_first = spaced is not None and not tok.decode([spaced]).startswith(" ")

    def _decode(self, ids: list[int]) -> str:
        """Text of tokens: their bytes decoded with errors="replace" (see ``engine``)."""
        table = self.token_bytes
        text = b"".join(table[i] if 0 <= i < len(table) else b"" for i in ids).decode(
            "utf-8", "replace")
        return text[1:] if self.strip_first and text.startswith(" ") else text

    def _logprob(self, logits: torch.Tensor, token: int, k: int) -> TokenLogprob:
        """The chosen token's logprob and the ``k`` most likely tokens' (those a constraint
        forbids are left out: -inf is no JSON number; a chosen one, should the closing steer
        pick it, is -9999.0 as OpenAI writes it)."""
        logprobs = torch.log_softmax(logits.double(), dim=-1)

        def entry(t: int) -> tuple[str, bytes, float]:
            data = self.token_bytes[t] if 0 <= t < len(self.token_bytes) else b""
            value = float(logprobs[t])
            return data.decode("utf-8", "replace"), data, value if value > -9999 else -9999.0

        top: tuple[TopToken, ...] = ()
        if k > 0:
            values, order = torch.topk(logprobs, min(k, logprobs.shape[0]))
            top = tuple(TopToken(*entry(int(t))) for v, t in zip(values.tolist(),
                                                                 order.tolist(), strict=True)
                        if v > float("-inf"))
        return TokenLogprob(*entry(token), top=top)

    def generate(self, prompt_ids: list[int], sampling: SamplingParams,
                 matcher: Any) -> Iterator[Step]:
        """One record per generated token, the last with the finish reason (see ``engine``).

        Over 60 lines on purpose: one loop holds the KV cache, the constraint, the
        incremental decoder and the stop search, whose order matters at every token.
        """
        max_tokens, stops, k = sampling.max_tokens, list(sampling.stops), sampling.top_logprobs
        eos = self.tokenizer.eos_token_id
        generator = torch.Generator(device="cpu")
        # any integer is a valid OpenAI seed; torch takes 64 bits
        seed = sampling.seed
        generator.manual_seed(seed % 2**63 if seed is not None else int(time.time_ns() % 2**63))
        # one bit per token, 32 to an int32 word, as llguidance fills it (all allowed: -1)
        bitmask = torch.full((1, (self.ll_tokenizer.vocab_size + 31) // 32), -1,
                             dtype=torch.int32) if matcher is not None else None
        ids = torch.tensor([prompt_ids], device=self.device)
        past = None
        emitted = ""
        decoder = TailDecoder(self._decode)
        # The last tokens of a constrained budget go to closing the JSON (see _closing_token).
        reserve = min(max_tokens // 2, max(8, max_tokens // 3))
        with torch.inference_mode():
            for step in range(max_tokens):
                result = self.model(input_ids=ids, use_cache=True, **{self._cache_arg: past})
                past = getattr(result, "cache", None) or getattr(result, "past_key_values", None)
                logits = result.logits[0, -1, :].float().cpu()
                if matcher is not None:
                    if matcher.is_stopped():
                        yield Step("", step, "stop")
                        return
                    logits = self._masked(logits, matcher, bitmask)
                token = None
                if matcher is not None and max_tokens - step <= reserve:
                    token = self._closing_token(bitmask, decoder.full_text(), eos)
                if token is None:
                    token = self._sample(logits, sampling.temperature, sampling.top_p,
                                         generator)
                if matcher is not None:
                    matcher.consume_token(token)
                if token == eos:
                    yield Step("", step, "stop")
                    return
                logprob = self._logprob(logits, token, k) if k is not None else None
                seen = len(decoder.text)  # settled text, searched for stops already
                decoder.add(token)
                text = decoder.full_text()  # as a full decode: a partial char as U+FFFD
                cut = first_stop(text, stops, seen)
                if cut is not None:
                    yield Step(text[len(emitted):cut], len(decoder.ids), "stop", logprob)
                    return
                if matcher is not None and matcher.is_stopped():
                    yield Step(text[len(emitted):], len(decoder.ids), "stop", logprob)
                    return
                # emit settled text only (a partial UTF-8 character may still complete), less
                # its end where that may still begin a stop string
                safe = safe_prefix(decoder.text, stops)
                yield Step(safe[len(emitted):], len(decoder.ids), None, logprob)
                emitted = max(safe, emitted, key=len)
                ids = torch.tensor([[token]], device=self.device)
        yield Step(decoder.full_text()[len(emitted):], len(decoder.ids), "length")

    def _masked(self, logits: torch.Tensor, matcher: Any, bitmask: torch.Tensor) -> torch.Tensor:
        """The logits with every token the grammar forbids next at -inf.

        ``llguidance.torch`` is not used: importing it imports torch's inductor (its
        ``apply_token_bitmask_inplace`` is a ``torch.compile`` kernel), and that import plus
        the kernel's first compile in the warm-up were ~9 s, half of the server's start
        (issue #18).  The matcher writes the mask straight into ``bitmask``; its bits are
        unpacked here in eager torch (microseconds)."""
        row = bitmask[0]
        matcher.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())
        vocab = min(self.ll_tokenizer.vocab_size, logits.shape[0])
        bits = (bitmask[0].unsqueeze(1) >> BIT_SHIFTS) & 1  # token 32*i + j: word i, bit j
        allowed = bits.reshape(-1)[:vocab].bool()
        masked = torch.full_like(logits, float("-inf"))
        masked[:vocab] = logits[:vocab].masked_fill(~allowed, float("-inf"))
        return masked

    def _closing_token(self, bitmask: torch.Tensor, text: str, eos: int) -> int | None:
        """Near the end of the budget, steer a constrained output to its shortest end.

        A random (or rambling) model can stay inside a free string, key or array until
        max_tokens cuts the JSON off.  With few tokens left we pick, among the tokens the
        grammar allows, EOS if the value is complete, else a token that closes the open
        string, else one made of ``}`` / ``]``, else ``,`` (a required key comes next and the
        grammar forces its name).  Deterministic, and always grammar-legal: only allowed
        tokens are chosen; when none of them closes anything, normal sampling goes on.
        """
        def allowed(token: int) -> bool:
            return 0 <= token < bitmask.shape[1] * 32 and \
                bool((int(bitmask[0, token >> 5]) >> (token & 31)) & 1)

        if allowed(eos):
            return eos
        in_string = inside_string(text)  # the output so far, decoded incrementally
        for token in self.closers[0 if in_string else 1]:
            if allowed(token):
                return token
        return None

    @staticmethod
    def _sample(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator) -> int:
        """Greedy at temperature 0, else nucleus sampling that can never produce nan.

        In float64 (a top_p of 1e-300 is 0 in float32, and kept nothing: issue #15); the most
        likely token is always kept; a distribution that still is not finite (an extreme
        temperature over extreme logits) falls back to the argmax."""
        greedy = int(torch.argmax(logits).item())
        if temperature <= 0:
            return greedy
        probs = torch.softmax(logits.double() / temperature, dim=-1)
        if top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
            keep[0] = True
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs * keep)
        total = float(probs.sum())
        if not torch.isfinite(probs).all() or not total > 0:
            return greedy
        return int(torch.multinomial(probs / total, 1, generator=generator).item())

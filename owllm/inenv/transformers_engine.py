"""The transformers engine of OWLLM's server: model loading, generation, constrained decoding
and stop handling.  No HTTP here (that is ``transformers_app``): an engine turns a prompt into
text deltas.

In-env module (``owllm.inenv``): torch, transformers, llguidance (peft / bitsandbytes when
the model needs them) come from the model's env; it never imports the host-side ``owllm``.

* Generation is greedy at temperature 0, else sampled (top_p, a seed).  Stop strings cut the
  output; text that may still become a stop string (or half a UTF-8 character) is held back.
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

from .openai_helpers import (
    ApiError,
    TailDecoder,
    byte_tokens,
    closer_tokens,
    content_text,
    first_stop,
    format_schema,
    inside_string,
    prompt_char_limit,
    safe_prefix,
    tool_functions,
)


@dataclass
class Engine:
    config: dict[str, Any]
    model: Any = None
    tokenizer: Any = None
    ll_tokenizer: Any = None
    closers: tuple[list[int], list[int]] = ([], [])  # (inside a string, outside one)
    device: str = "cpu"
    longest_token: int = 1  # characters of the longest vocabulary entry (prompt_char_limit)
    byte_tokens: frozenset[int] = frozenset()  # byte-fallback tokens (TailDecoder.hold)
    ready: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

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
        self.byte_tokens = byte_tokens(self.tokenizer.get_vocab())
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
        print("owllm-server: warm-up forward pass and generation", flush=True)
        # Run the real generation path once, constrained (KV cache, sampling, llguidance's
        # tokenizer tables), so that the first request is as fast as the next ones.
        try:
            matcher = self.matcher({"type": "json_object"})
        except Exception as exc:  # plain generation still works; constrained requests 500
            print(f"owllm-server: constrained decoding unavailable: {exc!r}", flush=True)
            matcher = None
        for _ in self.generate(self.tokenizer("Hello").input_ids, 2, 0.0, 1.0, 0, [], matcher):
            pass
        self.ready = True
        print("owllm-server: ready", flush=True)

    # -- prompts ---------------------------------------------------------------------------

    def chat_prompt(self, messages: list[dict[str, Any]],
                    tools: list[dict[str, Any]] | None) -> str:
        """The prompt of a chat: OpenAI messages (plain dicts), the tools described in a
        system message, the configured system prompt, the model's chat template."""
        messages = [dict(m) for m in messages]
        for index, m in enumerate(messages):
            if isinstance(m.get("content"), list):  # OpenAI content parts: keep the text
                if any(part.get("type", "text") == "text" and not isinstance(
                        part.get("text"), str) for part in m["content"]):
                    raise ApiError(400, f"messages[{index}].content: a text part needs a "
                                        "string 'text'", "messages")
                m["content"] = content_text(m["content"])
        if tools:
            described = json.dumps(tool_functions(tools))
            messages.insert(0, {"role": "system", "content":
                                "You can call these tools. To call one, answer with only a "
                                'JSON object {"tool": name, "args": {...}, "id": "call_1"}.\n'
                                f"Tools: {described}"})
        system = self.config.get("system_prompt") or ""
        if system and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system})
        if self.config.get("model_type", "instruct") == "base" or \
                not getattr(self.tokenizer, "chat_template", None):
            return "\n".join(f"{m['role']}: {m.get('content') or ''}" for m in messages) + \
                "\nassistant:"
        from jinja2.exceptions import TemplateError

        try:
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                          add_generation_prompt=True))
        except TemplateError as exc:
            print(f"owllm-server: the chat template failed: {exc!r}", flush=True)
            # The template's own raise_exception(...) speaks to the caller ("roles must
            # alternate"); anything else is an internal detail, kept to the log.
            detail = f": {str(exc)[:200]}" if type(exc) is TemplateError else ""
            raise ApiError(400, f"the model's chat template cannot render these messages"
                                f"{detail}", "messages") from exc

    def encode(self, prompt: str, chat: bool) -> list[int]:
        # A chat template already holds the bos token; a plain prompt gets the tokenizer's.
        ids: list[int] = self.tokenizer(prompt, add_special_tokens=not chat).input_ids
        return ids

    # -- constrained decoding ----------------------------------------------------------------

    def matcher(self, response_format: dict[str, Any] | None,
                forced: dict[str, Any] | None = None) -> Any:
        """An llguidance matcher for the response format (or a forced tool-call schema)."""
        import llguidance
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

    def generate(self, prompt_ids: list[int], max_tokens: int, temperature: float,
                 top_p: float, seed: int | None, stops: list[str],
                 matcher: Any) -> Iterator[tuple[str, int, str | None]]:
        """Yield (text delta, tokens so far, finish reason or None)."""
        import llguidance.torch as llt

        eos = self.tokenizer.eos_token_id
        generator = torch.Generator(device="cpu")
        # any integer is a valid OpenAI seed; torch takes 64 bits
        generator.manual_seed(seed % 2**63 if seed is not None else int(time.time_ns() % 2**63))
        bitmask = llt.allocate_token_bitmask(1, self.ll_tokenizer.vocab_size) \
            if matcher is not None else None
        ids = torch.tensor([prompt_ids], device=self.device)
        past = None
        emitted = ""
        decoder = TailDecoder(functools.partial(self.tokenizer.decode, skip_special_tokens=True),
                              self.byte_tokens)
        # The last tokens of a constrained budget go to closing the JSON (see _closing_token).
        reserve = min(max_tokens // 2, max(8, max_tokens // 3))
        with torch.inference_mode():
            for step in range(max_tokens):
                result = self.model(input_ids=ids, use_cache=True, **{self._cache_arg: past})
                past = getattr(result, "cache", None) or getattr(result, "past_key_values", None)
                logits = result.logits[0, -1, :].float().cpu()
                if matcher is not None:
                    if matcher.is_stopped():
                        yield "", step, "stop"
                        return
                    logits = self._masked(logits, matcher, bitmask)
                token = None
                if matcher is not None and max_tokens - step <= reserve:
                    token = self._closing_token(bitmask, decoder.full_text(), eos)
                if token is None:
                    token = self._sample(logits, temperature, top_p, generator)
                if matcher is not None:
                    matcher.consume_token(token)
                if token == eos:
                    yield "", step, "stop"
                    return
                seen = len(decoder.text)  # settled text, searched for stops already
                decoder.add(token)
                text = decoder.full_text()  # as a full decode: a partial char as U+FFFD
                cut = first_stop(text, stops, seen)
                if cut is not None:
                    yield text[len(emitted):cut], len(decoder.ids), "stop"
                    return
                # emit settled text only (a byte token's group may still change what follows),
                # less its end where that may still begin a stop string
                safe = safe_prefix(decoder.text, stops)
                if len(safe) > len(emitted):
                    yield safe[len(emitted):], len(decoder.ids), None
                    emitted = safe
                if matcher is not None and matcher.is_stopped():
                    yield text[len(emitted):], len(decoder.ids), "stop"
                    return
                ids = torch.tensor([[token]], device=self.device)
        yield decoder.full_text()[len(emitted):], len(decoder.ids), "length"

    def _masked(self, logits: torch.Tensor, matcher: Any, bitmask: torch.Tensor) -> torch.Tensor:
        """The logits with every token the grammar forbids next at -inf."""
        import llguidance.torch as llt

        llt.fill_next_token_bitmask(matcher, bitmask, 0)
        vocab = self.ll_tokenizer.vocab_size
        masked = logits[:vocab].unsqueeze(0)
        llt.apply_token_bitmask_inplace(masked, bitmask)
        logits = torch.full_like(logits, float("-inf"))
        logits[:vocab] = masked[0]
        return logits

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
        if temperature <= 0:
            return int(torch.argmax(logits).item())
        probs = torch.softmax(logits / temperature, dim=-1)
        if top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
            sorted_probs = sorted_probs * keep
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        return int(torch.multinomial(probs / probs.sum(), 1, generator=generator).item())

"""OWLLM's OpenAI-compatible server for transformers models.

Standalone script, run with the model env's python (torch, transformers, fastapi, uvicorn,
llguidance; peft / bitsandbytes when the model needs them); it never imports ``owllm``::

    python transformers_server.py --config-json FILE --host 127.0.0.1 --port N

FILE: {"model_id", "model_path", "model_type": "instruct"|"base", "system_prompt",
"adapter_dir", "use_4bit", "device", "dtype", "generation": {"max_tokens", "temperature",
"top_p"}, "max_model_len"}.

* ``GET /health`` is 503 until the model is loaded *and* one forward pass has run, then 200.
* ``POST /v1/chat/completions`` and ``/v1/completions``: sampling (temperature 0 = greedy,
  top_p, seed), stop strings, ``stream`` (SSE), ``tools`` (a call in the output comes back as
  ``message.tool_calls``), ``response_format`` json_object / json_schema enforced by
  llguidance (non-flexible whitespace, so a random model cannot wander in blanks).  The last
  third of a constrained budget (at most half) steers to the shortest legal end: EOS when the
  value is complete, else close the open string, else ``}``/``]``, else ``,``; so a random
  model's free strings still end in valid JSON when the budget allows it (else ``length``).
* With ``tools``, a JSON tool call in the output comes back as ``message.tool_calls`` (when
  streaming: one ``delta.tool_calls`` chunk at the end) with finish_reason ``tool_calls``;
  ``tool_choice`` "required" / a named function forces a call through the same grammar.
* Unknown routes / methods and validation errors get OpenAI-shaped bodies too (404/405/422;
  malformed JSON is 400).  Pure helpers live in ``_server_helpers.py`` (loaded by path).
* The ``model`` field must name the configured model id; an omitted one means that model.
* Generation runs one request at a time (a lock): a small CPU/GPU server gains nothing from
  interleaving, and it keeps the KV cache and the constraint matcher per request simple.
* Errors are OpenAI-style ``{"error": {...}}`` bodies; no request takes the server down, and
  no response carries an exception text, traceback or file path (the log has them).
* Hostile requests stop at ``asgi_guard.py`` (loaded by path): loopback ``Host`` / ``Origin``
  only (``OWLLM_ALLOWED_HOSTS`` adds names), JSON bodies only, ``OWLLM_MAX_BODY_BYTES``
  (16 MiB), nesting depth, and ``Authorization: Bearer $OWLLM_API_KEY`` on every route but
  ``/health`` when the launcher sets that variable.
* ``/health`` and ``/v1/models`` are async handlers on the event loop: generation requests
  fill the worker threads (one generates, the rest wait for the lock), and a liveness probe
  queued behind them timed out, so supervisors killed a busy server (issue 13).
* A prompt with more characters than the context can hold is refused before it is
  tokenized (see ``prompt_char_limit``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

# This file sits next to owllm/backends/transformers.py, which would shadow the real
# `transformers` package: drop the script's own folder from the import path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != _HERE]


def _load_helpers(name: str = "owllm_server_helpers", filename: str = "_server_helpers.py"
                  ) -> Any:
    """Import a helper module from this script's folder by path (not on sys.path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(_HERE, filename))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:  # for the type checker only: at run time owllm is not importable here
    from owllm.backends._server_helpers import (
        MAX_STOP,
        ApiError,
        closer_tokens,
        content_text,
        error_body,
        first_stop,
        format_schema,
        inside_string,
        parse_tool_calls,
        prompt_char_limit,
        safe_prefix,
        tool_call_schema,
        tool_functions,
    )
    from owllm.backends.asgi_guard import Guard
else:
    _h = _load_helpers()
    ApiError, error_body, parse_tool_calls = _h.ApiError, _h.error_body, _h.parse_tool_calls
    tool_call_schema, closer_tokens, inside_string = (
        _h.tool_call_schema, _h.closer_tokens, _h.inside_string)
    format_schema, first_stop, safe_prefix, MAX_STOP = (
        _h.format_schema, _h.first_stop, _h.safe_prefix, _h.MAX_STOP)
    content_text, prompt_char_limit, tool_functions = (
        _h.content_text, _h.prompt_char_limit, _h.tool_functions)
    Guard = _load_helpers("owllm_asgi_guard", "asgi_guard.py").Guard


def _preflight(argv: list[str]) -> None:
    """Fail in milliseconds, before torch is imported, on a config that cannot load."""
    if "--config-json" not in argv or argv.index("--config-json") + 1 >= len(argv):
        return  # argparse reports it
    try:
        with open(argv[argv.index("--config-json") + 1], encoding="utf-8") as handle:
            cfg = json.load(handle)
    except (OSError, ValueError) as exc:
        sys.exit(f"owllm-server: cannot read the config: {exc}")
    for key, marker in (("model_path", "config.json"), ("adapter_dir", "adapter_config.json")):
        path = cfg.get(key)
        # a relative "org/name" may be a hub id; the launcher hands local paths in absolute
        if isinstance(path, str) and path.startswith(("/", ".", "~")):
            full = os.path.join(os.path.expanduser(path), marker)
            if not os.path.isfile(full):
                sys.exit(f"owllm-server: {key} {path!r} is not usable: {full} does not exist")


if __name__ == "__main__":
    _preflight(sys.argv[1:])
print("owllm-server: importing torch and transformers", flush=True)
import torch  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

# -- request models ---------------------------------------------------------------------------

class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None


class CompletionRequest(Sampling):
    prompt: str


# -- the engine -------------------------------------------------------------------------------

@dataclass
class Engine:
    config: dict[str, Any]
    model: Any = None
    tokenizer: Any = None
    ll_tokenizer: Any = None
    closers: tuple[list[int], list[int]] = ([], [])  # (inside a string, outside one)
    device: str = "cpu"
    longest_token: int = 1  # characters of the longest vocabulary entry (prompt_char_limit)
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

    def chat_prompt(self, request: ChatRequest) -> str:
        messages = [m.model_dump(exclude_none=True) for m in request.messages]
        for index, m in enumerate(messages):
            if isinstance(m.get("content"), list):  # OpenAI content parts: keep the text
                if any(part.get("type", "text") == "text" and not isinstance(
                        part.get("text"), str) for part in m["content"]):
                    raise ApiError(400, f"messages[{index}].content: a text part needs a "
                                        "string 'text'", "messages")
                m["content"] = content_text(m["content"])
        if request.tools:
            described = json.dumps(tool_functions(request.tools))
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
        out_ids: list[int] = []
        emitted = ""
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
                    llt.fill_next_token_bitmask(matcher, bitmask, 0)
                    vocab = self.ll_tokenizer.vocab_size
                    masked = logits[:vocab].unsqueeze(0)
                    llt.apply_token_bitmask_inplace(masked, bitmask)
                    logits = torch.full_like(logits, float("-inf"))
                    logits[:vocab] = masked[0]
                token = None
                if matcher is not None and max_tokens - step <= reserve:
                    token = self._closing_token(bitmask, out_ids, eos)
                if token is None:
                    token = self._sample(logits, temperature, top_p, generator)
                if matcher is not None:
                    matcher.consume_token(token)
                if token == eos:
                    yield "", step, "stop"
                    return
                out_ids.append(token)
                text = self.tokenizer.decode(out_ids, skip_special_tokens=True)
                cut = first_stop(text, stops)
                if cut is not None:
                    yield text[len(emitted):cut], len(out_ids), "stop"
                    return
                # hold back text that may still become a stop string or a partial character
                safe = safe_prefix(text, stops)
                if len(safe) > len(emitted):
                    yield safe[len(emitted):], len(out_ids), None
                    emitted = safe
                if matcher is not None and matcher.is_stopped():
                    yield text[len(emitted):], len(out_ids), "stop"
                    return
                ids = torch.tensor([[token]], device=self.device)
        text = self.tokenizer.decode(out_ids, skip_special_tokens=True)
        yield text[len(emitted):], len(out_ids), "length"

    def _closing_token(self, bitmask: torch.Tensor, out_ids: list[int],
                       eos: int) -> int | None:
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
        in_string = inside_string(self.tokenizer.decode(out_ids, skip_special_tokens=True))
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


# -- the app ----------------------------------------------------------------------------------

def create_app(engine: Engine) -> FastAPI:
    app = FastAPI(title="owllm transformers server")
    model_id = engine.config["model_id"]
    defaults = engine.config.get("generation") or {}

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, exc.kind, exc.param, exc.code), exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        if first.get("type") == "json_invalid":
            return JSONResponse(error_body(f"request body is not valid JSON: {first.get('msg')}",
                                           "invalid_request_error"), 400)
        message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: "
                            f"{e.get('msg')}" for e in errors)
        return JSONResponse(error_body(message, "invalid_request_error", where,
                                       "validation_error"), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error"),
                            exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(_: Request, exc: Exception) -> JSONResponse:
        # The details go to the log only: an exception text can hold paths and internals.
        print(f"owllm-server: internal error: {exc!r}", flush=True)
        return JSONResponse(error_body("internal error; the server log has the details",
                                       "server_error"), 500)

    # async: runs on the event loop, never queued behind generation requests that hold
    # every worker thread (a sync handler timed out under 60 concurrent completions).
    @app.get("/health")
    async def health() -> JSONResponse:
        if not engine.ready:
            return JSONResponse({"status": "loading"}, 503)
        return JSONResponse({"status": "ok", "model": model_id})

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_id, "object": "model",
                                            "created": 0, "owned_by": "owllm"}]}

    def check(request: Sampling, max_tokens: int | None) -> dict[str, Any]:
        if request.model not in (None, "", model_id):
            raise ApiError(404, f"model {request.model!r} does not exist; this server serves "
                                f"{model_id!r}", "model", "model_not_found")
        if request.n != 1:
            raise ApiError(400, "only n=1 is supported", "n")
        stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        if len(stops) > MAX_STOP:
            raise ApiError(400, f"at most {MAX_STOP} stop sequences", "stop")
        return {
            "max_tokens": max_tokens or defaults.get("max_tokens", 64),
            "temperature": request.temperature if request.temperature is not None
            else defaults.get("temperature", 0.0),
            "top_p": request.top_p if request.top_p is not None else defaults.get("top_p", 1.0),
            "seed": request.seed, "stops": stops,
        }

    def run(request: Sampling, prompt: str, chat: bool, max_tokens: int | None,
            tools: bool, forced: dict[str, Any] | None = None) -> Any:
        if not engine.ready:
            raise ApiError(503, "model is still loading", kind="server_error")
        params = check(request, max_tokens)
        # Refused before tokenizing: tokenizing megabytes costs seconds and hundreds of MB.
        if len(prompt) > engine.max_prompt_chars:
            raise ApiError(400, f"the prompt has {len(prompt)} characters, more than fit in "
                                f"the model's context length of {engine.max_len} tokens",
                           "messages" if chat else "prompt", "context_length_exceeded")
        prompt_ids = engine.encode(prompt, chat)
        if max_tokens is None:  # the configured default shrinks to fit; an explicit one not
            params["max_tokens"] = max(1, min(params["max_tokens"],
                                              engine.max_len - len(prompt_ids)))
        if len(prompt_ids) + params["max_tokens"] > engine.max_len:
            raise ApiError(400, f"prompt ({len(prompt_ids)} tokens) + max_tokens "
                                f"({params['max_tokens']}) exceeds the model's context length "
                                f"{engine.max_len}", "max_tokens", "context_length_exceeded")
        matcher = engine.matcher(request.response_format, forced)
        created, rid = int(time.time()), f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        kind = "chat.completion" if chat else "text_completion"
        gen = engine.generate(prompt_ids, params["max_tokens"], params["temperature"],
                              params["top_p"], params["seed"], params["stops"], matcher)

        def usage(n: int) -> dict[str, int]:
            return {"prompt_tokens": len(prompt_ids), "completion_tokens": n,
                    "total_tokens": len(prompt_ids) + n}

        if request.stream:
            include_usage = bool((request.stream_options or {}).get("include_usage"))

            def chunk(delta: str, finish: str | None, first: bool = False,
                      calls: list[dict[str, Any]] | None = None) -> str:
                if chat:
                    d: dict[str, Any] = {"role": "assistant"} if first else {}
                    if delta:
                        d["content"] = delta
                    if calls:
                        d["tool_calls"] = [{"index": i, **c} for i, c in enumerate(calls)]
                    choice: dict[str, Any] = {"index": 0, "delta": d, "finish_reason": finish}
                else:
                    choice = {"index": 0, "text": delta, "finish_reason": finish}
                body = {"id": rid, "object": f"{kind}.chunk" if chat else kind,
                        "created": created, "model": model_id, "choices": [choice]}
                return f"data: {json.dumps(body)}\n\n"

            def events() -> Iterator[str]:
                with engine.lock:
                    yield chunk("", None, first=True)
                    count = 0
                    # With tools, an output that opens like JSON is held back until it ends:
                    # a tool call then goes out as one `delta.tool_calls` chunk, as OpenAI does.
                    held: list[str] | None = None
                    try:
                        for delta, count, finish in gen:  # noqa: B007
                            if tools and held is None and delta.lstrip()[:1] in ("{", "["):
                                held = []
                            if held is not None:
                                held.append(delta)
                                if not finish:
                                    continue
                                text = "".join(held)
                                calls = parse_tool_calls(text)
                                yield chunk("", "tool_calls", calls=calls) if calls else \
                                    chunk(text, finish)
                            elif delta or finish:
                                yield chunk(delta, finish)
                    except Exception as exc:  # the stream has started: report in-band
                        print(f"owllm-server: internal error while streaming: {exc!r}",
                              flush=True)
                        body = error_body("internal error; the server log has the details",
                                          "server_error")
                        yield f"data: {json.dumps(body)}\n\n"
                    if include_usage:
                        yield "data: " + json.dumps({"id": rid, "object": f"{kind}.chunk",
                                                     "created": created, "model": model_id,
                                                     "choices": [], "usage": usage(count)}) \
                            + "\n\n"
                    yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        with engine.lock:
            pieces, count, finish = [], 0, "length"
            for delta, count, reason in gen:  # noqa: B007
                pieces.append(delta)
                finish = reason or finish
        text = "".join(pieces)
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            calls = parse_tool_calls(text) if tools else None
            if calls:
                message = {"role": "assistant", "content": None, "tool_calls": calls}
                finish = "tool_calls"
            choice = {"index": 0, "message": message, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish}
        return {"id": rid, "object": kind, "created": created, "model": model_id,
                "choices": [choice], "usage": usage(count)}

    @app.post("/v1/chat/completions")
    def chat(request: ChatRequest) -> Any:
        tool_functions(request.tools)  # a wrong shape is a 400 here, not a crash later
        tools = bool(request.tools) and request.tool_choice != "none"
        forced = tool_call_schema(request.tools or [], request.tool_choice) if tools else None
        return run(request, engine.chat_prompt(request), True,
                   request.max_completion_tokens or request.max_tokens, tools, forced)

    @app.post("/v1/completions")
    def completions(request: CompletionRequest) -> Any:
        return run(request, request.prompt, False, request.max_tokens, False)

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="OWLLM transformers server")
    parser.add_argument("--config-json", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    with open(args.config_json, encoding="utf-8") as handle:
        engine = Engine(json.load(handle))
    # Serve first (so /health answers 503 while loading), load in a daemon thread: a SIGTERM
    # during the load then exits at once through uvicorn's own signal handling.
    # The guard sits outside FastAPI: a refused request never reaches routing or parsing.
    app = Guard(create_app(engine), bind_host=args.host)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port,
                                           log_level="warning", access_log=False))
    failed: list[str] = []

    def load() -> None:
        try:
            engine.load()
        except BaseException as exc:  # a bad model or adapter: say so, then exit non-zero
            failed.append(f"owllm-server: cannot load model: {type(exc).__name__}: {exc}")
            print(failed[-1], file=sys.stderr, flush=True)
            server.should_exit = True

    threading.Thread(target=load, name="owllm-load", daemon=True).start()
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to the handler it
    # found: make that one a clean exit (status 0) instead of death by signal (-15).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.run()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""OWLLM's OpenAI-compatible HTTP app over any ``engine.Engine`` (transformers, llama.cpp):
routes, request validation, OpenAI shapes, streaming.  ``create_app(engine)`` is the app; the
server modules (``transformers_app``, the llama.cpp one) load an engine and serve it behind
``asgi_guard``.

In-env module (``owllm.inenv``): fastapi, pydantic (and the engine's packages) come from the
model's env; it never imports the host-side ``owllm``, nor torch (an engine does).

* ``GET /health`` is 503 until the engine is ready, then 200; ``GET /v1/models`` lists the
  one configured id.
* ``POST /v1/chat/completions`` and ``/v1/completions``: temperature (0 = greedy: the argmax,
  nothing else applies), top_p (the most likely token always stays: no nan), ``seed`` (same
  seed, same output; choice i of ``n`` samples with seed + i), ``stop`` (at most 4, never in
  the text), ``n`` (1..8 sequences, one at a time under the engine's lock; ``usage`` sums
  them), ``stream`` (``stream_options.include_usage``), ``response_format`` json_object /
  json_schema (the engine's matcher), ``max_tokens`` / ``max_completion_tokens`` (>= 1).
* Logprobs in OpenAI's shapes, streamed too (each chunk carries the tokens generated since
  the last one): chat ``logprobs: true`` + ``top_logprobs`` 0..20
  (``{"content": [{token, logprob, bytes, top_logprobs}]}``), completions ``logprobs`` 0..5
  (``tokens`` / ``token_logprobs`` / ``top_logprobs`` / ``text_offset``).  They are the
  model's, a constraint's mask applied (a forced token: 0), before temperature and top_p;
  the EOS that ends a choice is not listed.
* ``echo`` (completions) puts the prompt in front of the text; with ``logprobs`` (prompt
  logprobs) it is a 400.  Parameters this app does not implement (``NEUTRAL``:
  frequency/presence penalties, ``logit_bias``, ``best_of``, ``suffix``, ...) are a 400
  naming them unless set to their neutral value; they are never silently ignored.
* Tools: ``tools`` are described to the model in a system message; ``tool_choice`` "auto"
  (the model decides: a JSON call envelope in its output becomes ``tool_calls``), "none"
  (tools not described, no calls), "required" / a named function (forced through the
  engine's grammar); ``parallel_tool_calls`` false allows exactly one call, true (the
  default) a non-empty array of calls too.  ``finish_reason`` is "tool_calls" only for a
  complete call; a call cut by ``max_tokens`` is "length" and the message carries the partial
  JSON as ``content`` (no ``tool_calls``).  Streamed as OpenAI does (a first delta: index,
  id, type, name, arguments ""; then argument pieces, the name never repeated): a forced
  call while it is generated (``tool_stream``), an ``auto`` one once complete.  Assistant
  ``tool_calls`` and ``role: tool`` messages render back (``openai_helpers.chat_messages``).
* Text: the engine's rule (see ``engine``): invalid UTF-8 is one U+FFFD per invalid
  sequence, held back until the sequence completes or fails.
* Errors are OpenAI-shaped ``{"error": {message, type, param, code}}``: 400 for validation
  (schema errors included: OpenAI answers 400, not 422; malformed JSON too), 404 for an
  unknown model or route, 405, 413 at the guard, 503 while loading.  No request takes the
  server down, no response carries an exception text, traceback or file path (the log has
  them); an error after a stream started is an in-band ``server_error`` event.
* The ``model`` field must name the configured model id; an omitted one means that model;
  responses always carry the id.
* ``/health`` and ``/v1/models`` are async (on the event loop): a liveness probe queued
  behind generation requests timed out, and supervisors killed a busy server (issue 13).
* A prompt with more characters than the context can hold is refused before it is
  tokenized (see ``prompt_char_limit``).
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine import Engine, SamplingParams, Step, TokenLogprob
from .openai_helpers import (
    MAX_STOP,
    ApiError,
    error_body,
    parse_tool_calls,
    tool_call_schema,
    tool_functions,
)
from .openai_shapes import LogprobShaper, Reply, call_deltas
from .tool_stream import forced_chunks

__all__ = ["ChatRequest", "CompletionRequest", "Completions", "create_app"]

MAX_N = 8  # choices per request: each is a full generation, one at a time
MAX_TOP_LOGPROBS = 20  # chat's top_logprobs (OpenAI's limit)
MAX_LOGPROBS = 5  # completions' logprobs (OpenAI's limit)
# Parameters OpenAI (or vLLM) define that this app does not implement, with the values that
# mean "off": any other value is a 400 naming the parameter, never silently ignored (#15).
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (None, 0), "presence_penalty": (None, 0), "logit_bias": (None, {}),
    "best_of": (None, 1), "suffix": (None, ""), "top_k": (None, 0, -1), "min_p": (None, 0),
    "repetition_penalty": (None, 1), "functions": (None, []), "function_call": (None,),
    "prediction": (None,), "audio": (None,), "modalities": (None, ["text"]),
}

# -- request models ---------------------------------------------------------------------------


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
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
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)


class CompletionRequest(Sampling):
    prompt: str
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False


@dataclass
class Job:
    """One validated request: what every choice of it shares."""

    chat: bool
    n: int
    top_logprobs: int | None  # None: no logprobs
    tools: bool = False  # parse the output as tool calls
    parallel: bool = True  # several calls allowed
    echo: str = ""  # completions: the prompt, when echoed
    include_usage: bool = False
    forced: bool = False  # tool_choice required / named: the output is a call (tool_stream)


# -- the completion logic behind both routes -----------------------------------------------

class Completions:
    """Checks a request against the engine's limits, runs it, shapes the answer."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.model_id: str = engine.config["model_id"]
        self.defaults: dict[str, Any] = engine.config.get("generation") or {}

    def check(self, request: Sampling) -> None:
        """What every request must satisfy before any work: ready, our model, no parameter
        this app would have to ignore."""
        if not self.engine.ready:
            raise ApiError(503, "model is still loading", kind="server_error")
        if request.model not in (None, "", self.model_id):
            raise ApiError(404, f"model {request.model!r} does not exist; this server serves "
                                f"{self.model_id!r}", "model", "model_not_found")
        extra = request.model_extra or {}
        for name, neutral in NEUTRAL.items():
            if name in extra and not any(extra[name] == value for value in neutral):
                raise ApiError(400, f"{name} is not supported by this server (leave it unset)",
                               name, "unsupported_parameter")

    def sampling(self, request: Sampling, max_tokens: int | None,
                 top_logprobs: int | None) -> SamplingParams:
        """Sampling parameters: the request's, else the model's configured defaults."""
        stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        if len(stops) > MAX_STOP:
            raise ApiError(400, f"at most {MAX_STOP} stop sequences", "stop")
        defaults = self.defaults
        return SamplingParams(
            max_tokens=max_tokens or defaults.get("max_tokens", 64),
            temperature=request.temperature if request.temperature is not None
            else defaults.get("temperature", 0.0),
            top_p=request.top_p if request.top_p is not None else defaults.get("top_p", 1.0),
            seed=request.seed, stops=tuple(stops), top_logprobs=top_logprobs)

    def encode(self, prompt: str, chat: bool, sampling: SamplingParams,
               max_tokens: int | None) -> tuple[list[int], SamplingParams]:
        """The prompt's token ids, once it is known to fit with the completion budget."""
        engine = self.engine
        # Refused before tokenizing: tokenizing megabytes costs seconds and hundreds of MB.
        if len(prompt) > engine.max_prompt_chars:
            raise ApiError(400, f"the prompt has {len(prompt)} characters, more than fit in "
                                f"the model's context length of {engine.max_len} tokens",
                           "messages" if chat else "prompt", "context_length_exceeded")
        try:  # JSON can carry a lone UTF-16 surrogate ("\ud800"): no tokenizer takes one
            prompt.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ApiError(400, f"the {'messages hold' if chat else 'prompt holds'} a lone "
                                f"UTF-16 surrogate at character {exc.start}: not valid Unicode",
                           "messages" if chat else "prompt") from None
        prompt_ids = engine.encode(prompt, chat)
        if max_tokens is None:  # the configured default shrinks to fit; an explicit one not
            sampling = replace(sampling, max_tokens=max(1, min(
                sampling.max_tokens, engine.max_len - len(prompt_ids))))
        if len(prompt_ids) + sampling.max_tokens > engine.max_len:
            raise ApiError(400, f"prompt ({len(prompt_ids)} tokens) + max_tokens "
                                f"({sampling.max_tokens}) exceeds the model's context length "
                                f"{engine.max_len}", "max_tokens", "context_length_exceeded")
        return prompt_ids, sampling

    def run(self, request: Sampling, job: Job, prompt: str, max_tokens: int | None,
            forced: dict[str, Any] | None = None) -> Any:
        """A response for one request: a JSON body, or a stream of server-sent events."""
        engine = self.engine
        sampling = self.sampling(request, max_tokens, job.top_logprobs)
        prompt_ids, sampling = self.encode(prompt, job.chat, sampling, max_tokens)
        # One constraint per choice (a matcher keeps state); a bad schema is a 400 here.
        try:
            matchers = [engine.matcher(request.response_format, forced) for _ in range(job.n)]
        except ApiError as exc:
            if forced is None:
                raise
            raise ApiError(400, exc.message.replace("response_format schema",
                                                    "the tool's parameters schema"),
                           "tools") from None
        # Choice i samples with seed + i: n=1 and the first of n=2 agree for the same seed.
        gens = [engine.generate(prompt_ids, replace(sampling, seed=None if sampling.seed is None
                                                    else sampling.seed + i), matchers[i])
                for i in range(job.n)]  # generators: nothing runs until consumed, under lock
        reply = Reply(job.chat, self.model_id, len(prompt_ids))
        if request.stream:
            job.include_usage = bool((request.stream_options or {}).get("include_usage"))
            return StreamingResponse(self.events(gens, reply, job),
                                     media_type="text/event-stream")
        choices, total = [], 0
        with engine.lock:
            for index, gen in enumerate(gens):
                pieces, entries, finish, count = [], [], "length", 0
                for step in gen:
                    pieces.append(step.text)
                    count, finish = step.tokens, step.finish or finish
                    if step.logprob is not None:
                        entries.append(step.logprob)
                total += count
                text = "".join(pieces)
                calls = parse_tool_calls(text, job.parallel) if job.tools else None
                choices.append(reply.choice(index, job.echo + text, finish, calls,
                                            self.logprobs(job, entries)))
        return JSONResponse(reply.body(choices, total))  # a dict: jsonable_encoder's walk

    @staticmethod
    def logprobs(job: Job, entries: list[TokenLogprob],
                 shaper: LogprobShaper | None = None) -> dict[str, Any] | None:
        if job.top_logprobs is None:
            return None
        return (shaper or LogprobShaper(job.chat, len(job.echo))).shape(entries)

    def events(self, gens: list[Iterator[Step]], reply: Reply, job: Job) -> Iterator[str]:
        """The server-sent events of a streamed request: its choices one after the other."""
        with self.engine.lock:
            total = 0
            try:
                for index, gen in enumerate(gens):
                    total += yield from self.stream_choice(index, gen, reply, job)
            except Exception as exc:  # the stream has started: report in-band
                print(f"owllm-server: internal error while streaming: {exc!r}", flush=True)
                body = error_body("internal error; the server log has the details",
                                  "server_error")
                yield f"data: {json.dumps(body)}\n\n"
            if job.include_usage:
                yield reply.usage_chunk(total)
            yield "data: [DONE]\n\n"

    def stream_choice(self, index: int, gen: Iterator[Step], reply: Reply,
                      job: Job) -> Generator[str, None, int]:
        """The chunks of one choice; returns its completion tokens.

        A forced call streams as it is generated (``tool_stream``).  Otherwise, with tools,
        output opening like JSON is held back until it ends: a complete call then goes out as
        OpenAI streams one (``call_deltas``), anything else as text.
        Logprobs of tokens that settled no text yet ride on the next chunk.
        """
        yield reply.chunk(index, job.echo, role=True)
        shaper = LogprobShaper(job.chat, len(job.echo))
        if job.forced:  # a call by construction: streamed as it is generated
            return (yield from forced_chunks(index, gen, reply,
                                             lambda e: self.logprobs(job, e, shaper)))
        held: list[str] | None = None
        pending: list[TokenLogprob] = []
        sent, count = "", 0
        for step in gen:
            count = step.tokens
            if step.logprob is not None:
                pending.append(step.logprob)
            if job.tools and held is None and not sent.strip() and \
                    step.text.lstrip()[:1] in ("{", "["):
                held = []
            if held is not None:
                held.append(step.text)
                if step.finish is None:
                    continue
                text = "".join(held)
                calls = parse_tool_calls(text, job.parallel)
                for deltas in call_deltas(calls or []):
                    yield reply.chunk(index, tool_calls=deltas)
                yield reply.chunk(index, "" if calls else text,
                                  "tool_calls" if calls else step.finish,
                                  logprobs=self.logprobs(job, pending, shaper))
            elif step.text or step.finish:
                sent += step.text
                yield reply.chunk(index, step.text, step.finish,
                                  logprobs=self.logprobs(job, pending, shaper))
                pending = []
        return count


# -- the app --------------------------------------------------------------------------------

def add_error_handlers(app: FastAPI) -> None:
    """Every error response OpenAI-shaped, none with an exception text."""

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
                                       "validation_error"), 400)

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


def create_app(engine: Engine) -> FastAPI:
    """The FastAPI app serving ``engine`` (routes only; the guard wraps it in ``main``)."""
    app = FastAPI(title="owllm OpenAI-compatible server")
    add_error_handlers(app)
    completions = Completions(engine)
    model_id = completions.model_id

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

    @app.post("/v1/chat/completions")
    def chat(request: ChatRequest) -> Any:
        completions.check(request)
        tool_functions(request.tools)  # a wrong shape is a 400 here, not a crash later
        if not request.tools and request.tool_choice not in (None, "none", "auto"):
            raise ApiError(400, "tool_choice needs tools", "tool_choice")
        tools = bool(request.tools) and request.tool_choice != "none"
        parallel = request.parallel_tool_calls is not False
        forced = tool_call_schema(request.tools or [], request.tool_choice, parallel) \
            if tools else None
        if request.top_logprobs is not None and not request.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        job = Job(True, request.n, (request.top_logprobs or 0) if request.logprobs else None,
                  tools, parallel, forced=forced is not None)
        messages = [m.model_dump(exclude_none=True) for m in request.messages]
        prompt = engine.chat_prompt(messages, request.tools if tools else None)
        return completions.run(request, job, prompt,
                               request.max_completion_tokens or request.max_tokens, forced)

    @app.post("/v1/completions")
    def complete(request: CompletionRequest) -> Any:
        completions.check(request)
        if request.echo and request.logprobs is not None:
            raise ApiError(400, "echo with logprobs (the prompt's logprobs) is not supported",
                           "echo")
        job = Job(False, request.n, request.logprobs, echo=request.prompt if request.echo
                  else "")
        return completions.run(request, job, request.prompt, request.max_tokens)

    return app

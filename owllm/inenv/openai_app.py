"""OWLLM's OpenAI-compatible HTTP app over any ``engine.Engine`` (transformers, llama.cpp):
routes, request validation, OpenAI shapes, streaming.  ``create_app(engine)`` is the app; the
server modules (``transformers_app``, the llama.cpp one) load an engine and serve it behind
``asgi_guard``.

In-env module (``owllm.inenv``): fastapi, pydantic (and the engine's packages) come from the
model's env; it never imports the host-side ``owllm``, nor torch (an engine does).

* ``GET /health`` is 503 until the engine is ready, then 200.
* ``POST /v1/chat/completions`` and ``/v1/completions``: sampling (temperature 0 = greedy,
  top_p, seed), stop strings, ``stream`` (SSE), ``tools``, ``response_format`` json_object /
  json_schema (enforced by the engine's matcher).
* With ``tools``, a JSON tool call in the output comes back as ``message.tool_calls`` (when
  streaming: ``delta.tool_calls`` at the end) with finish_reason ``tool_calls``;
  ``tool_choice`` "required" / a named function forces a call through the same grammar.
* Unknown routes / methods and validation errors get OpenAI-shaped bodies too; malformed
  JSON is 400.  Pure helpers live in ``openai_helpers``.
* The ``model`` field must name the configured model id; an omitted one means that model.
* Generation runs one sequence at a time (the engine's lock).
* Errors are OpenAI-style ``{"error": {...}}`` bodies; no request takes the server down, and
  no response carries an exception text, traceback or file path (the log has them).
* ``/health`` and ``/v1/models`` are async handlers on the event loop: generation requests
  fill the worker threads (one generates, the rest wait for the lock), and a liveness probe
  queued behind them timed out, so supervisors killed a busy server (issue 13).
* A prompt with more characters than the context can hold is refused before it is
  tokenized (see ``prompt_char_limit``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine import Engine, SamplingParams, Step
from .openai_helpers import (
    MAX_STOP,
    ApiError,
    Reply,
    error_body,
    parse_tool_calls,
    tool_call_schema,
    tool_functions,
)

__all__ = ["ChatRequest", "CompletionRequest", "Completions", "create_app"]

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



Generation = Iterator[Step]


# -- the completion logic behind both routes -----------------------------------------------

class Completions:
    """Checks a request against the engine's limits, runs it, shapes the answer."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.model_id: str = engine.config["model_id"]
        self.defaults: dict[str, Any] = engine.config.get("generation") or {}

    def params(self, request: Sampling, max_tokens: int | None) -> dict[str, Any]:
        """Sampling parameters: the request's, else the model's configured defaults."""
        if request.model not in (None, "", self.model_id):
            raise ApiError(404, f"model {request.model!r} does not exist; this server serves "
                                f"{self.model_id!r}", "model", "model_not_found")
        if request.n != 1:
            raise ApiError(400, "only n=1 is supported", "n")
        stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        if len(stops) > MAX_STOP:
            raise ApiError(400, f"at most {MAX_STOP} stop sequences", "stop")
        defaults = self.defaults
        return {
            "max_tokens": max_tokens or defaults.get("max_tokens", 64),
            "temperature": request.temperature if request.temperature is not None
            else defaults.get("temperature", 0.0),
            "top_p": request.top_p if request.top_p is not None else defaults.get("top_p", 1.0),
            "seed": request.seed, "stops": stops,
        }

    def encode(self, prompt: str, chat: bool, params: dict[str, Any],
               max_tokens: int | None) -> list[int]:
        """The prompt's token ids, once it is known to fit with the completion budget."""
        engine = self.engine
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
        return prompt_ids

    def run(self, request: Sampling, prompt: str, chat: bool, max_tokens: int | None,
            tools: bool, forced: dict[str, Any] | None = None) -> Any:
        """A response for one request: a JSON body, or a stream of server-sent events."""
        engine = self.engine
        if not engine.ready:
            raise ApiError(503, "model is still loading", kind="server_error")
        params = self.params(request, max_tokens)
        prompt_ids = self.encode(prompt, chat, params, max_tokens)
        matcher = engine.matcher(request.response_format, forced)
        reply = Reply(chat, self.model_id, len(prompt_ids))
        # A generator: nothing runs until it is consumed, under the engine's lock.
        gen = engine.generate(prompt_ids, SamplingParams(
            max_tokens=params["max_tokens"], temperature=params["temperature"],
            top_p=params["top_p"], seed=params["seed"], stops=tuple(params["stops"])), matcher)
        if request.stream:
            include_usage = bool((request.stream_options or {}).get("include_usage"))
            return StreamingResponse(self.events(gen, reply, tools, include_usage),
                                     media_type="text/event-stream")
        with engine.lock:
            pieces, count, finish = [], 0, "length"
            for step in gen:
                pieces.append(step.text)
                count, finish = step.tokens, step.finish or finish
        return reply.body("".join(pieces), count, finish, tools)

    def events(self, gen: Generation, reply: Reply, tools: bool,
               include_usage: bool) -> Iterator[str]:
        """The server-sent events of a streamed completion."""
        with self.engine.lock:
            yield reply.chunk("", None, first=True)
            count = 0
            # With tools, an output that opens like JSON is held back until it ends: a tool
            # call then goes out as one `delta.tool_calls` chunk, as OpenAI does.
            held: list[str] | None = None
            try:
                for step in gen:
                    delta, count, finish = step.text, step.tokens, step.finish
                    if tools and held is None and delta.lstrip()[:1] in ("{", "["):
                        held = []
                    if held is not None:
                        held.append(delta)
                        if not finish:
                            continue
                        text = "".join(held)
                        calls = parse_tool_calls(text)
                        yield reply.chunk("", "tool_calls", calls=calls) if calls else \
                            reply.chunk(text, finish)
                    elif delta or finish:
                        yield reply.chunk(delta, finish)
            except Exception as exc:  # the stream has started: report in-band
                print(f"owllm-server: internal error while streaming: {exc!r}", flush=True)
                body = error_body("internal error; the server log has the details",
                                  "server_error")
                yield f"data: {json.dumps(body)}\n\n"
            if include_usage:
                yield reply.usage_chunk(count)
            yield "data: [DONE]\n\n"


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
        tool_functions(request.tools)  # a wrong shape is a 400 here, not a crash later
        tools = bool(request.tools) and request.tool_choice != "none"
        forced = tool_call_schema(request.tools or [], request.tool_choice) if tools else None
        messages = [m.model_dump(exclude_none=True) for m in request.messages]
        return completions.run(request, engine.chat_prompt(messages, request.tools), True,
                               request.max_completion_tokens or request.max_tokens, tools,
                               forced)

    @app.post("/v1/completions")
    def complete(request: CompletionRequest) -> Any:
        return completions.run(request, request.prompt, False, request.max_tokens, False)

    return app

"""llama-cpp-python's OpenAI-compatible server, with the parts OWLLM's contract adds.

In-env module (``owllm.inenv``), run with the ``llamacpp`` env's python; it never imports
the host-side ``owllm``::

    python owllm/inenv/__main__.py llamacpp_server --config-json RUN.json --host 127.0.0.1 \
        --port 8080

llama-cpp-python serves the model; a small ASGI layer in front of it adds:

* ``GET /health`` (llama-cpp-python has none).  The app is created after the model has
  loaded, so a server that answers is a server that can generate.
* OpenAI's ``response_format: {"type": "json_schema", ...}``, which llama-cpp-python rejects
  (it knows only ``json_object``).  The schema is compiled to a GBNF grammar here; a schema
  the converter cannot handle is a 400 naming the problem, never a silent fall back to
  unconstrained JSON (which llama-cpp-python's own ``json_object`` path does).
* Requests queue: llama-cpp-python's default cuts a running stream short whenever another
  request arrives, which turns into an empty or truncated answer under concurrent clients.
* The model's config defaults: ``system_prompt`` when a chat has no system message, and
  ``generation`` (max_tokens, temperature, top_p) where a request leaves them out.
* Hostile requests stop at ``asgi_guard.py`` in front of everything (loopback ``Host`` /
  ``Origin``, JSON bodies only, a body cap, nesting depth, ``OWLLM_API_KEY``).  A prompt
  with more characters than ``n_ctx`` tokens can hold is refused before llama.cpp tokenizes
  it (9 MB took 2.7 s of the model's lock).
* Error responses are OpenAI-shaped and never carry an exception text: llama-cpp-python's
  500s (``message=str(error)``) and FastAPI's ``{"detail": ...}`` 422s are rewritten.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .asgi_guard import Guard
from .llamacpp_grammar import schema_grammar
from .openai_helpers import content_text, prompt_char_limit

INTERNAL_ERROR = "internal error; the server log has the details"
GENERATE_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completion",
                  "/v1/engines/copilot-codex/completions": "completion"}
# llama-cpp-python's route handler answers a body that fails its own validation with a 500
# carrying the exception text (the input included): these are validated here first.
VALIDATED_PATHS = {"/v1/chat/completions": "CreateChatCompletionRequest",
                   "/v1/completions": "CreateCompletionRequest",
                   "/v1/engines/copilot-codex/completions": "CreateCompletionRequest",
                   "/v1/embeddings": "CreateEmbeddingRequest",
                   "/extras/tokenize": "TokenizeInputRequest",
                   "/extras/tokenize/count": "TokenizeInputRequest",
                   "/extras/detokenize": "DetokenizeInputRequest"}


class RequestError(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 status: int = 400) -> None:
        super().__init__(message)
        self.param, self.code, self.status = param, code, status


def validate(model: str, body: Any) -> None:
    """Check a body against llama-cpp-python's own request model; a RequestError (422, as
    OWLLM's transformers server answers) naming the fields, never echoing their input."""
    from llama_cpp.server import types
    from pydantic import ValidationError

    try:
        getattr(types, model).model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        where = [".".join(str(p) for p in e.get("loc", ())) for e in errors]
        message = "; ".join(f"{w or 'body'}: {e.get('msg')}"
                            for w, e in zip(where, errors, strict=True))
        param = str(errors[0]["loc"][0]) if errors and errors[0].get("loc") else None
        raise RequestError(message[:1000] or "invalid request", param, "validation_error",
                           422) from None


def prompt_chars(kind: str, body: dict[str, Any]) -> int:
    """The characters of a request's prompt (chat: all message texts), counted without
    tokenizing; a prompt given as token ids counts one per id."""
    if kind == "chat":
        messages = body.get("messages")
        return sum(len(content_text(m.get("content"))) for m in messages
                   if isinstance(m, dict)) if isinstance(messages, list) else 0
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return len(prompt)
    if isinstance(prompt, list):
        return sum(len(p) if isinstance(p, str) else 1 for p in prompt)
    return 0


def rewrite(kind: str, body: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """A request as llama-cpp-python understands it, with OWLLM's defaults filled in."""
    limit = settings.get("max_prompt_chars")
    if limit and prompt_chars(kind, body) > limit:
        raise RequestError(f"the prompt has {prompt_chars(kind, body)} characters, more than "
                           f"fit in the model's context length of {settings.get('n_ctx')} "
                           "tokens", "messages" if kind == "chat" else "prompt",
                           "context_length_exceeded")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise RequestError("response_format.json_schema.schema must be a JSON object",
                               "response_format")
        if body.get("grammar"):
            raise RequestError("give either response_format or grammar, not both", "grammar")
        try:
            body["grammar"] = schema_grammar(schema)
        except Exception as exc:  # the converter raises bare Exceptions and others
            raise RequestError(f"response_format.json_schema.schema cannot be compiled to a "
                               f"llama.cpp grammar: {exc}", "response_format") from exc
        del body["response_format"]
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object" and kind == "completion":
        raise RequestError("response_format is supported on /v1/chat/completions; on "
                           "/v1/completions use the json_schema type", "response_format")
    if body.get("model") is None:  # else llama-cpp-python answers with the GGUF's path
        body["model"] = settings["model_id"]
    defaults = settings.get("generation") or {}
    for name in ("max_tokens", "temperature", "top_p"):
        if body.get(name) is None and defaults.get(name) is not None:
            body[name] = defaults[name]
    system = settings.get("system_prompt")
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        # OpenAI allows an assistant turn of only tool_calls with content null;
        # llama-cpp-python's request model insists on a string.
        if isinstance(message, dict) and message.get("role") == "assistant" \
                and message.get("content") is None:
            message["content"] = ""
    if kind == "chat" and system and isinstance(messages, list) and not any(
            isinstance(m, dict) and m.get("role") == "system" for m in messages):
        body["messages"] = [{"role": "system", "content": system}, *messages]
    return body


class OwllmLayer:
    """Pure ASGI middleware: /health, request checks and rewriting for the generate
    endpoints, OpenAI-shaped errors everywhere."""

    def __init__(self, app: Any, settings: dict[str, Any]) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if path == "/health" and method in ("GET", "HEAD"):
            await _json_response(send, 200, {"status": "ok",
                                             "model": self.settings["model_id"]})
            return
        send = _openai_errors(send)
        kind, model = GENERATE_PATHS.get(path), VALIDATED_PATHS.get(path)
        if method != "POST" or (kind is None and model is None):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        try:
            raw = self.prepare(kind, model, b"".join(chunks))
        except RequestError as exc:
            await _json_response(send, exc.status, {"error": {
                "message": str(exc), "type": "invalid_request_error",
                "param": exc.param, "code": exc.code}})
            return
        headers = [(k, v) for k, v in scope.get("headers", []) if k != b"content-length"]
        headers.append((b"content-length", str(len(raw)).encode()))
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()  # the disconnect, when it comes
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)

    def prepare(self, kind: str | None, model: str | None, raw: bytes) -> bytes:
        """The body llama-cpp-python gets: parsed, rewritten (generate endpoints), checked
        against its request model; a RequestError for what it would answer with a 500."""
        try:
            body = json.loads(raw)
        except ValueError:
            raise RequestError("request body is not valid JSON") from None
        except RecursionError:  # the guard caps the depth first; never a 500 here either
            raise RequestError("the JSON body nests too deeply") from None
        if kind is not None and isinstance(body, dict):
            try:
                body = rewrite(kind, body, self.settings)
            except RecursionError:  # a schema deep enough to exhaust the converter
                raise RequestError("response_format.json_schema.schema nests too deeply",
                                   "response_format") from None
        if model is not None:
            validate(model, body)
        return json.dumps(body).encode()


def _openai_error(status: int, raw: bytes) -> dict[str, Any]:
    """An error response of llama-cpp-python as OpenAI's shape, without exception texts."""
    if status >= 500:  # llama-cpp-python puts str(exception) in its 500s; the log has it
        return {"error": {"message": INTERNAL_ERROR, "type": "server_error", "param": None,
                          "code": None}}
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return {"error": {"message": error["message"],
                          "type": error.get("type") or "invalid_request_error",
                          "param": error.get("param"), "code": error.get("code")}}
    detail = payload.get("detail") if isinstance(payload, dict) else None
    param = None
    if isinstance(detail, list):  # FastAPI's validation errors: where and what, no input
        items = [d for d in detail if isinstance(d, dict)]
        where = [".".join(str(p) for p in d.get("loc", ()) if p != "body") for d in items]
        message = "; ".join(f"{w}: {d.get('msg')}"
                            for w, d in zip(where, items, strict=True)) or "invalid request"
        param = where[0] if where and where[0] else None
    elif isinstance(detail, str):
        message = detail
    else:
        message = f"request failed with HTTP {status}"
    return {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": "validation_error" if status == 422 else None}}


def _openai_errors(send: Any) -> Any:
    """Wrap ``send`` so that error responses (status >= 400) go out OpenAI-shaped."""
    held: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message.get("status", 200) >= 400:
            held.update(message)
            return
        if not held or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        status = int(held["status"])
        data = json.dumps(_openai_error(status, b"".join(chunks))).encode()
        headers = [(k, v) for k, v in held.get("headers", [])
                   if k.lower() not in (b"content-length", b"content-type")]
        headers += [(b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    return wrapped


async def _json_response(send: Any, status: int, payload: dict[str, Any]) -> None:
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def server_args_to_settings(extra: list[str]) -> dict[str, str]:
    """The model's ``server_args`` (``--n_threads 2``, ``--n_batch=256``) as llama-cpp-python
    ModelSettings fields; pydantic converts the values and rejects unknown names."""
    out: dict[str, str] = {}
    items = iter(extra)
    for item in items:
        if not item.startswith("--"):
            raise SystemExit(f"llamacpp_server: unexpected argument {item!r} "
                             "(server_args are --name value pairs)")
        name, eq, value = item[2:].partition("=")
        if not eq:
            value = next(items, None)  # type: ignore[assignment]
            if value is None:
                raise SystemExit(f"llamacpp_server: {item} needs a value")
        out[name.replace("-", "_")] = value
    return out


def disable_extra_buffers() -> None:
    """Load weights without llama.cpp's extra buffer types (AMX tiles, repacked Q4 layouts).

    Those kernels are picked from the CPU's flags; on hosts that list an instruction set they
    cannot run (a VM advertising AMX) they crash the server (SIGSEGV/SIGILL).  llama.cpp's
    ``use_extra_bufts`` model parameter turns them off; llama-cpp-python has no argument for
    it, so the default parameters it starts from are patched."""
    import llama_cpp.llama_cpp as lib

    default = lib.llama_model_default_params

    def params() -> Any:
        value = default()
        value.use_extra_bufts = False
        return value

    lib.llama_model_default_params = params


def longest_token_bytes() -> int | None:
    """Bytes of the loaded model's longest token (an upper bound on its characters), for the
    prompt character cap; None when llama-cpp-python does not let us see the model."""
    try:
        from llama_cpp.server import app as server_app

        proxy = getattr(server_app, "_llama_proxy", None)
        llama = proxy() if proxy is not None else None
        if llama is None:
            return None
        return max((len(llama.detokenize([t], special=True))
                    for t in range(llama.n_vocab())), default=1)
    except Exception as exc:  # an internal API changed: serve without the cap, say so
        print(f"owllm llamacpp_server: no prompt character cap ({exc!r})", flush=True)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-json", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args, extra = parser.parse_known_args(argv)
    with open(args.config_json, encoding="utf-8") as f:
        settings = json.load(f)
    overrides = server_args_to_settings(extra)

    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    model_args: dict[str, Any] = {
        "model": settings["model_path"], "model_alias": settings["model_id"],
        "n_ctx": settings.get("n_ctx") or 2048, "verbose": False,
        **(settings.get("model_settings") or {}),
        **overrides,
    }
    if settings.get("extra_buffers") is False:
        disable_extra_buffers()
    print(f"owllm llamacpp_server: loading {model_args['model']} (extra buffer types "
          f"{'off' if settings.get('extra_buffers') is False else 'on'})", flush=True)
    # interrupt_requests=False: llama-cpp-python otherwise ends a running stream early
    # (with [DONE]) as soon as another request waits; requests queue instead.
    server = ServerSettings(host=args.host, port=args.port, interrupt_requests=False)
    app = create_app(server_settings=server,
                     model_settings=[ModelSettings(**model_args)])
    settings["n_ctx"] = model_args["n_ctx"]
    longest = longest_token_bytes()
    if longest:
        settings["max_prompt_chars"] = prompt_char_limit(int(model_args["n_ctx"]), longest)
    print(f"owllm llamacpp_server: model loaded; serving on {args.host}:{args.port}",
          flush=True)
    uvicorn.run(Guard(OwllmLayer(app, settings), bind_host=args.host), host=args.host,
                port=args.port, log_level="info", timeout_graceful_shutdown=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())

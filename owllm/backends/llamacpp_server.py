"""llama-cpp-python's OpenAI-compatible server, with the parts OWLLM's contract adds.

Standalone script, run with the ``llamacpp`` env's python; it never imports ``owllm``::

    python llamacpp_server.py --config-json RUN.json --host 127.0.0.1 --port 8080

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
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

# This file sits next to OWLLM's backend modules (transformers.py, vllm.py), which would
# shadow the real packages: drop the script's own folder from the import path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != _HERE]

GENERATE_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completion",
                  "/v1/engines/copilot-codex/completions": "completion"}


# llama-cpp-python's schema converter lets raw control characters into strings, which no
# strict JSON parser accepts; its `char` rule gets the exclusion llama.cpp's own has.
_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_STRICT_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'
# It also ignores integer bounds: a bounded integer of at most this many values becomes an
# enum.  Wider integer ranges and number (float) bounds stay unenforced, and OWLLM's
# capabilities say so (the validator still rejects such calls).
MAX_ENUM_INTEGERS = 1024


def lower_schema(schema: Any) -> Any:
    """The schema with what llama-cpp-python's converter ignores rewritten into what it
    enforces (small integer ranges -> enums)."""
    if isinstance(schema, list):
        return [lower_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: lower_schema(value) for key, value in schema.items()}
    if schema.get("type") == "integer" and "enum" not in schema:
        number = (int, float)
        lows, highs = [], []
        if isinstance(schema.get("minimum"), number):
            lows.append(math.ceil(schema["minimum"]))
        if isinstance(schema.get("exclusiveMinimum"), number):
            lows.append(math.floor(schema["exclusiveMinimum"]) + 1)
        if isinstance(schema.get("maximum"), number):
            highs.append(math.floor(schema["maximum"]))
        if isinstance(schema.get("exclusiveMaximum"), number):
            highs.append(math.ceil(schema["exclusiveMaximum"]) - 1)
        if lows and highs:
            low, high = max(lows), min(highs)
            if 0 <= high - low < MAX_ENUM_INTEGERS:
                out = {"enum": list(range(low, high + 1))}
    return out


def schema_grammar(schema: dict[str, Any]) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return json_schema_to_gbnf(json.dumps(lower_schema(schema))).replace(_LOOSE_CHAR,
                                                                         _STRICT_CHAR)


class RequestError(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def rewrite(kind: str, body: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """A request as llama-cpp-python understands it, with OWLLM's defaults filled in."""
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
    """Pure ASGI middleware: /health, and request rewriting for the generate endpoints."""

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
        kind = GENERATE_PATHS.get(path)
        if kind is None or method != "POST":
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
        raw = b"".join(chunks)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None  # not JSON: llama-cpp-python's own validation answers
        if isinstance(body, dict):
            try:
                raw = json.dumps(rewrite(kind, body, self.settings)).encode()
            except RequestError as exc:
                await _json_response(send, 400, {"error": {
                    "message": str(exc), "type": "invalid_request_error",
                    "param": exc.param, "code": None}})
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
    print(f"owllm llamacpp_server: model loaded; serving on {args.host}:{args.port}",
          flush=True)
    uvicorn.run(OwllmLayer(app, settings), host=args.host, port=args.port,
                log_level="info", timeout_graceful_shutdown=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())

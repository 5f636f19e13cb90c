"""A small OpenAI-compatible server for the conformance suite's own tests: real HTTP on
127.0.0.1 (stdlib, in a thread), conformant by default, broken on demand.

Its "model" writes words chosen by a seeded RNG: greedy (temperature 0) and seeded requests
are repeatable, others are not.  ``StubOpenAI.faults`` switches on the non-conformant
behaviours the issue saw in the field (``FAULTS``), one or several at a time, so each check
can be shown to fail on the fault it guards against and pass without it.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WORDS = ["sea ", "blue ", "wave ", "salt ", "ship ", "wind ", "gull ", "tide ", "deep ",
         "foam ", "reef ", "sand ", "moon ", "star ", "calm ", "rain "]
TRACEBACK = ('Traceback (most recent call last):\n  File "/usr/lib/python3/dist-packages/'
             'server/app.py", line 42, in handle\nValueError: boom')
BODY_CAP = 16 << 20
FAULTS = (
    "models_missing", "chat_shape", "stream_no_finish", "completions_404", "greedy_random",
    "model_path", "unknown_model_200", "bad_json_500", "shape_422", "max_tokens_500",
    "too_large_200", "stop_included", "max_tokens_ignored", "n_ignored", "n_refused",
    "n_refused_unnamed", "logprobs_ignored", "usage_missing", "seed_ignored", "top_p_500",
    "json_schema_ignored", "tools_required_ignored", "tools_named_bad_args",
    "tools_auto_bad_args", "tools_none_ignored", "tool_name_repeated", "tool_cut_finish",
    "tool_message_500", "max_tokens_endless",
)


class StubOpenAI:
    """The server: ``url`` (the endpoint root), ``model``, the switchable ``faults``."""

    def __init__(self, model: str = "stub-model") -> None:
        self.model = model
        self.faults: set[str] = set()
        stub = self

        class Handler(_Handler):
            server_stub = stub

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> StubOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


class _Handler(BaseHTTPRequestHandler):
    server_stub: StubOpenAI
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    @property
    def faults(self) -> set[str]:
        return self.server_stub.faults

    def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, param: str | None = None) -> None:
        self._send(status, {"error": {"message": message, "type": "invalid_request_error",
                                      "param": param, "code": None}})

    def do_GET(self) -> None:
        if self.path != "/v1/models":
            return self._error(404, f"no route {self.path}")
        listed = [] if "models_missing" in self.faults else [
            {"id": self.server_stub.model, "object": "model", "owned_by": "stub"}]
        self._send(200, {"object": "list", "data": listed})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if length > BODY_CAP and "too_large_200" not in self.faults:
            return self._error(413, f"request body of {length} bytes is over {BODY_CAP}")
        if self.path == "/v1/completions" and "completions_404" in self.faults:
            return self._error(404, "no route /v1/completions")
        if self.path not in ("/v1/chat/completions", "/v1/completions"):
            return self._error(404, f"no route {self.path}")
        try:
            body = json.loads(raw)
        except ValueError:
            if "bad_json_500" in self.faults:
                return self._send(500, TRACEBACK, "text/plain")
            return self._error(400, "the body is not valid JSON")
        problem = _shape_problem(body, self.path)
        if problem:
            if "shape_422" in self.faults:
                return self._send(422, {"detail": [{"loc": ["body"], "msg": problem}]})
            return self._error(400, problem)
        self._answer(body)

    def _answer(self, body: dict[str, Any]) -> None:
        faults, stub = self.faults, self.server_stub
        model = body.get("model", stub.model)
        if model != stub.model and "unknown_model_200" not in faults:
            return self._error(404, f"model {model!r} does not exist", "model")
        max_tokens = body.get("max_tokens", 16)
        if max_tokens < 1:
            if "max_tokens_endless" in faults:  # generates until the client hangs up
                return self._endless()
            if "max_tokens_500" in faults:
                return self._send(500, TRACEBACK, "text/plain")
            return self._error(400, "max_tokens must be at least 1", "max_tokens")
        if body.get("top_p", 1) < 1e-10 and "top_p_500" in faults:
            return self._error(500, "probability tensor contains inf/nan")
        n = body.get("n", 1)
        if n > 1 and "n_refused" in faults:
            return self._error(400, "only n=1 is supported", "n")
        if n > 1 and "n_refused_unnamed" in faults:
            return self._error(400, "unsupported request")
        if "tool_message_500" in faults and any(m.get("role") == "tool"
                                                for m in body.get("messages", [])):
            return self._send(500, TRACEBACK, "text/plain")
        answer = _Generation(body, faults, stub.model)
        if body.get("stream"):
            return self._stream(answer.chunks())
        self._send(200, answer.response())

    def _endless(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        chunk = json.dumps({"object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": {"content": "sea "}, "finish_reason": None}]})
        try:
            while True:
                self.wfile.write(f"data: {chunk}\n\n".encode())
        except OSError:
            return

    def _stream(self, chunks: Iterator[dict[str, Any]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for chunk in chunks:
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True


def _shape_problem(body: Any, path: str) -> str | None:
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    if "max_tokens" in body and not isinstance(body["max_tokens"], int):
        return "max_tokens must be an integer"
    if path.endswith("/completions") and "chat" not in path:
        return None if isinstance(body.get("prompt"), str) else "prompt must be a string"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant",
                                                              "tool"):
            return f"messages[{i}].role must be system, user, assistant or tool"
        if not isinstance(m.get("content"), str | None):
            return f"messages[{i}].content must be a string"
    return None


def _fill(schema: dict[str, Any]) -> Any:
    """The first value a JSON schema allows (enums, integers, strings, objects)."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {k: _fill(v) for k, v in (schema.get("properties") or {}).items()}
    return {"integer": schema.get("minimum", 0), "boolean": True}.get(kind, "x")


class _Generation:
    """One request's answer, as a whole response or as stream chunks."""

    def __init__(self, body: dict[str, Any], faults: set[str], served: str) -> None:
        self.body, self.faults = body, faults
        self.chat = "messages" in body
        self.model = "/models/stub.gguf" if "model_path" in faults else body.get("model",
                                                                                  served)
        self.max_tokens = 6 if "max_tokens_ignored" in faults else body.get("max_tokens", 16)
        self.n = 1 if "n_ignored" in faults else body.get("n", 1)
        prompt = json.dumps(body.get("messages") or body.get("prompt"))
        greedy = body.get("temperature", 1.0) == 0 and "greedy_random" not in faults
        seed = body.get("seed") if "seed_ignored" not in faults else None
        self.rng = random.Random(prompt if greedy else None if seed is None
                                 else f"{seed}{prompt}")
        self.call = self._tool_call()

    def _tool_call(self) -> dict[str, Any] | None:
        tools, choice = self.body.get("tools"), self.body.get("tool_choice", "auto")
        if not tools or (choice == "none" and "tools_none_ignored" not in self.faults):
            return None
        if choice == "required" and "tools_required_ignored" in self.faults:
            return None
        if choice == "auto" and "tools_auto_bad_args" not in self.faults:
            return None
        args = json.dumps(_fill(tools[0]["function"].get("parameters") or {}))
        if "tools_named_bad_args" in self.faults or "tools_auto_bad_args" in self.faults:
            args = args[:-3]
        pieces = [args[i:i + 4] for i in range(0, len(args), 4)]
        cut = len(pieces) > self.max_tokens
        return {"name": tools[0]["function"]["name"], "pieces": pieces[:self.max_tokens],
                "finish": "tool_calls" if not cut or "tool_cut_finish" in self.faults
                else "length"}

    def _text(self) -> tuple[list[str], str]:
        schema = (self.body.get("response_format") or {}).get("json_schema")
        if schema and "json_schema_ignored" not in self.faults:
            return [json.dumps(_fill(schema["schema"]))], "stop"
        tokens = [self.rng.choice(WORDS) for _ in range(self.max_tokens)]
        stops = self.body.get("stop") or []
        text = "".join(tokens)
        for stop in [stops] if isinstance(stops, str) else stops:
            at = text.find(stop)
            if at >= 0:
                end = at + len(stop) if "stop_included" in self.faults else at
                return [text[:end]], "stop"
        return tokens, "length"

    def _logprobs(self, tokens: list[str]) -> Any:
        if "logprobs_ignored" in self.faults or not self.body.get("logprobs"):
            return None
        if self.chat:
            k = self.body.get("top_logprobs", 0)
            return {"content": [{"token": t, "logprob": -0.5, "bytes": list(t.encode()),
                                 "top_logprobs": [{"token": w, "logprob": -1.0, "bytes": []}
                                                  for w in WORDS[:k]]} for t in tokens]}
        k = self.body["logprobs"]
        return {"tokens": tokens, "token_logprobs": [-0.5] * len(tokens),
                "top_logprobs": [dict.fromkeys(WORDS[:k], -1.0) for _ in tokens],
                "text_offset": [0] * len(tokens)}

    def _choice(self, index: int) -> tuple[dict[str, Any], int]:
        if self.call is not None:
            message = {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_0", "type": "function", "function": {
                    "name": self.call["name"], "arguments": "".join(self.call["pieces"])}}]}
            return ({"index": index, "message": message, "finish_reason": self.call["finish"],
                     "logprobs": None}, len(self.call["pieces"]))
        tokens, finish = self._text()
        text, lp = "".join(tokens), self._logprobs(tokens)
        if not self.chat:
            return {"index": index, "text": text, "finish_reason": finish, "logprobs": lp}, \
                len(tokens)
        role = "bot" if "chat_shape" in self.faults else "assistant"
        return {"index": index, "message": {"role": role, "content": text},
                "finish_reason": finish, "logprobs": lp}, len(tokens)

    def response(self) -> dict[str, Any]:
        choices, used = zip(*(self._choice(i) for i in range(self.n)), strict=True)
        return {"id": "cmpl-stub", "object": "chat.completion" if self.chat
                else "text_completion", "created": 0, "model": self.model,
                "choices": list(choices), "usage": {
                    "prompt_tokens": 5, "completion_tokens": sum(used),
                    "total_tokens": 5 + sum(used)}}

    def chunks(self) -> Iterator[dict[str, Any]]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        head = {"id": "cmpl-stub", "object": kind, "created": 0, "model": self.model}
        used, finish = 0, "stop"
        for delta in self._deltas():
            if "finish" in delta:
                finish = delta.pop("finish")
                continue
            used += 1
            choice = {"index": 0, "delta": delta} if self.chat else {"index": 0, **delta}
            yield {**head, "choices": [{**choice, "finish_reason": None}]}
        if "stream_no_finish" not in self.faults:
            empty: dict[str, Any] = {"delta": {}} if self.chat else {"text": ""}
            yield {**head, "choices": [{"index": 0, **empty, "finish_reason": finish}]}
        options = self.body.get("stream_options") or {}
        if options.get("include_usage") and "usage_missing" not in self.faults:
            yield {**head, "choices": [], "usage": {"prompt_tokens": 5,
                                                    "completion_tokens": used,
                                                    "total_tokens": 5 + used}}

    def _deltas(self) -> Iterator[dict[str, Any]]:
        if self.call is not None:
            for i, piece in enumerate(self.call["pieces"]):
                function = {"arguments": piece}
                if i == 0 or "tool_name_repeated" in self.faults:
                    function["name"] = self.call["name"]
                call = {"index": 0, "function": function, **(
                    {"id": "call_0", "type": "function"} if i == 0 else {})}
                yield {"tool_calls": [call]}
            yield {"finish": self.call["finish"]}
            return
        tokens, finish = self._text()
        for token in tokens:
            yield {"content": token} if self.chat else {"text": token}
        yield {"finish": finish}

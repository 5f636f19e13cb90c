"""A small real OpenAI-shaped model server for the readiness-ladder tests (stdlib, its own
process, 127.0.0.1), launched through the real manager by tests/test_ladder.py.

It lists ``--model`` in ``/v1/models`` and answers completions, chat (a calculator call, then
an answer once a tool result is in the messages) and streams.  Modes, each a way a server
lies or breaks that its ``/health`` does not show:

* ``ok``: all of the above works.
* ``lying``: ``/health`` and ``/v1/models`` answer, every completion is a 500.
* ``unlisted``: ``/v1/models`` lists another model.
* ``deaf``: after the first ``/health`` (the manager's readiness probe) it stops listening and
  stays alive.
* ``runaway``: streams repeat one word until ``max_tokens``; chat pads the call with
  whitespace until ``max_tokens`` (finish_reason ``length``), as a constrained decoder stuck
  on a whitespace rule does (xgrammar #345, llama.cpp's JSON grammar).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

parser = argparse.ArgumentParser()
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--mode", default="ok")
parser.add_argument("--model", default="stub")
args = parser.parse_args()

CALL = '{"tool": "calculator", "args": {"expression": "6 * 7"}, "id": "call_1"}'


def reply(body: dict[str, Any], chat: bool) -> tuple[str, str, int]:
    """(text, finish_reason, completion_tokens) for a request."""
    limit = int(body.get("max_tokens") or 16)
    schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("name")
    if schema == "probe":  # OWLLM's structured-output probe: answered, so it is "constrained"
        return '{"ok": true}', "stop", 4
    if args.mode == "runaway":
        if body.get("stream"):
            return "la " * limit, "length", limit
        return CALL[:-1] + " " * (4 * limit), "length", limit
    if not chat:
        return "hi", "stop", 1
    messages = body.get("messages") or [{}]
    if messages[-1].get("role") == "tool":
        return "It is 42.", "stop", 4
    return (CALL, "stop", 20) if limit > 1 else ("{", "length", 1)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a: object) -> None:
        pass

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, {"status": "ok"})
            if args.mode == "deaf":  # stop listening (serve_forever waits: another thread)
                threading.Thread(target=lambda: (server.shutdown(), server.server_close()),
                                 daemon=True).start()
        elif self.path == "/v1/models":
            listed = "another-model" if args.mode == "unlisted" else args.model
            self._send(200, {"object": "list", "data": [{"id": listed, "object": "model"}]})
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if args.mode == "lying":
            self._send(500, {"error": {"message": "engine dead"}})
            return
        chat = self.path == "/v1/chat/completions"
        text, finish, tokens = reply(body, chat)
        usage = {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": 5 + tokens}
        if body.get("stream"):
            self._stream(text, finish, usage, chat)
            return
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        self._send(200, {"id": "x", "object": "chat.completion" if chat else "text_completion",
                         "created": int(time.time()), "model": args.model,
                         "choices": [choice], "usage": usage})

    def _stream(self, text: str, finish: str, usage: dict[str, int], chat: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        pieces = [text[i:i + 3] for i in range(0, len(text), 3)]
        for n, piece in enumerate(pieces):
            last = n == len(pieces) - 1
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish if last else None}
            choice.update({"delta": {"content": piece}} if chat else {"text": piece})
            self.wfile.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


server = ThreadingHTTPServer((args.host, args.port), Handler)
server.daemon_threads = True
server.serve_forever()
if args.mode == "deaf":  # alive, listening on nothing
    time.sleep(600)

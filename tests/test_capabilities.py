"""``owllm.capabilities``: the probe against a deliberately limited endpoint (a small real
HTTP server in this module that refuses tools, ignores logprobs and ``n``, streams no usage),
against one that is slow or gone, and against OWLLM's real transformers server (the run's
shared ``demo`` server, whose start recorded the probe in its row)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from owllm import capabilities
from owllm.capabilities import CHECKS, Probed, capability_record, probe_capabilities

KEY = "sk-probe"


class Limited(BaseHTTPRequestHandler):
    """An OpenAI-like endpoint with gaps: 400 to any ``tools``, no logprobs, one choice
    whatever ``n`` says, no usage chunk; the key is required.  ``slow`` names body fields
    whose requests take 4 s."""

    slow: tuple[str, ...] = ()

    def log_message(self, *args: object) -> None:
        pass

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            return self._json(401, {"error": {"message": "bad key"}})
        if any(field in body for field in self.slow):
            time.sleep(4)
        if "tools" in body:
            return self._json(400, {"error": {"message": "tools are not supported here"}})
        if self.path == "/v1/completions":
            return self._json(200, {"choices": [{"index": 0, "text": "hi"}]})
        content = '{"ok": true}' if "response_format" in body else "hi"
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            chunk = {"choices": [{"index": 0, "delta": {"content": content}}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())
            return None
        return self._json(200, {"choices": [{"index": 0, "finish_reason": "stop",
                                             "logprobs": None, "message": {
                                                 "role": "assistant", "content": content}}]})


@pytest.fixture
def limited() -> Iterator[tuple[str, type[Limited]]]:
    handler = type("LimitedHere", (Limited,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_a_limited_endpoint_shows_what_it_lacks(limited: tuple[str, Any]) -> None:
    url, _ = limited
    results = probe_capabilities(url + "/v1/", "m", api_key=KEY)
    assert list(results) == list(CHECKS)
    works = {"chat", "completions", "streaming", "structured_output"}
    assert {name for name, p in results.items() if p.supported} == works
    for name in ("tools_required", "tools_named", "tools_streaming", "tool_message"):
        assert results[name].reason == "HTTP 400: tools are not supported here", name
    assert "logprobs" in results["logprobs"].reason
    assert results["n"].reason == "n=2 answered 1 choice(s)"
    assert results["include_usage"].reason == "no chunk carried usage"
    record = capability_record(results, 0.5)
    assert record["tools"] is False and record["chat"] is True and record["probe_s"] == 0.5
    assert set(record["reasons"]) == set(CHECKS)


def test_the_key_and_headers_are_sent_and_a_refusal_is_a_reason(
        limited: tuple[str, Any]) -> None:
    url, _ = limited
    results = probe_capabilities(url, "m", checks=["chat"])
    assert results["chat"] == Probed(False, "HTTP 401: bad key")
    sent = probe_capabilities(url, "m", headers={"Authorization": f"Bearer {KEY}"},
                              checks=["chat"])
    assert sent["chat"].supported is True
    with pytest.raises(ValueError, match="unknown capability checks: nope"):
        probe_capabilities(url, "m", checks=["nope"])


def test_a_budget_leaves_slow_checks_unknown_and_a_later_probe_completes_them(
        limited: tuple[str, Any]) -> None:
    url, handler = limited
    handler.slow = ("n",)
    started = time.monotonic()
    results = probe_capabilities(url, "m", api_key=KEY, budget_s=2.0)
    assert time.monotonic() - started < 3.5
    assert results["n"].supported is None and "2 s budget" in results["n"].reason
    # logprobs warms some servers up for seconds: never probed within a budget.
    assert results["logprobs"].supported is None and "warms" in results["logprobs"].reason
    assert results["chat"].supported is True  # the others answered meanwhile
    record = capability_record(results)
    assert capabilities.unknown(record) == ["logprobs", "n"]
    handler.slow = ()
    merged = capabilities.merge(record, probe_capabilities(url, "m", api_key=KEY,
                                                           checks=["logprobs", "n"]))
    assert merged["logprobs"] is False and "missing" in merged["reasons"]["logprobs"]
    assert merged["n"] is False and merged["reasons"]["n"] == "n=2 answered 1 choice(s)"
    assert merged["chat"] is True and capabilities.unknown(merged) == []


def test_a_gone_endpoint_is_all_false_never_an_error() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), Limited) as server:
        port = server.server_address[1]  # bound then closed: nothing listens
    results = probe_capabilities(f"http://127.0.0.1:{port}", "m", timeout=2)
    assert not any(p.supported for p in results.values())
    assert all(p.reason == "request failed: ConnectError" for p in results.values())


@pytest.mark.slow
def test_the_transformers_server_start_records_a_probe_and_it_is_true(
        owllm_server_factory: Any) -> None:
    """The run's ``demo`` transformers server: its row holds the start's probe (within the
    budget, unknowns allowed), and a full probe agrees with what the server really does."""
    row = owllm_server_factory("demo")
    recorded = row["extra"]["capabilities"]
    assert set(CHECKS) <= set(recorded) and recorded["probe_s"] < capabilities.START_BUDGET_S + 1.5
    assert recorded["chat"] in (True, None) and set(recorded["reasons"]) == set(CHECKS)
    results = probe_capabilities(row["url"], row["model_id"])
    for name in ("chat", "completions", "streaming", "structured_output", "tools_required",
                 "tools_named", "tools_streaming", "tool_message", "include_usage"):
        assert results[name].supported, (name, results[name].reason)
    # n and logprobs: whatever the server does today, the probe says the same.
    body = {"model": row["model_id"], "temperature": 1.0, "seed": 0, "max_tokens": 1,
            "messages": [{"role": "user", "content": "Hi"}]}
    two = httpx.post(row["url"] + "/v1/chat/completions", json={**body, "n": 2}, timeout=60)
    assert results["n"].supported == (two.status_code == 200
                                       and len(two.json()["choices"]) == 2)
    lp = httpx.post(row["url"] + "/v1/chat/completions", timeout=60,
                    json={**body, "logprobs": True, "top_logprobs": 2}).json()
    shown = bool(((lp.get("choices") or [{}])[0].get("logprobs") or {}).get("content"))
    assert results["logprobs"].supported == shown

"""The runner over real HTTP: a scripted OpenAI-compatible server on loopback (exact control
of replies, faults and timing), and the real transformers server with the demo model."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from owllm.errors import UsageError
from owllm.quality import Endpoint, ToolCallSettings, load_cases, run_cases, run_tool_calls
from owllm.quality.runner import reply_text, request_body

CASES = load_cases("builtin")
BY_ID = {c.id: c for c in CASES}


def right_answer(case_id: str) -> str:
    case = BY_ID[case_id]
    calls = [{"tool": c.tool, "args": c.args, "id": f"call_{i}"}
             for i, c in enumerate(case.expected)]
    if not calls:
        return "No tool fits."
    return json.dumps(calls[0] if len(calls) == 1 else calls)


class Script:
    """What the fake server answers, per case id (found in the prompt), and what it saw."""

    def __init__(self) -> None:
        self.replies: dict[str, tuple[str, str, int]] = {}  # id -> (text, finish, tokens)
        self.drop_first: set[str] = set()  # close the connection on the first request
        self.status: dict[str, int] = {}
        self.bodies: list[dict[str, Any]] = []
        self.inflight = 0
        self.max_inflight = 0
        self.lock = threading.Lock()
        self.delay = 0.0


@pytest.fixture
def fake() -> Iterator[tuple[Endpoint, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["messages"][0]["content"]
            case = next(c for c in CASES if f"\n{c.prompt}\n" in prompt + "\n"
                        or prompt.endswith(c.prompt + "\n") or c.prompt in prompt)
            with script.lock:
                script.bodies.append(body)
                if case.id in script.drop_first:
                    script.drop_first.discard(case.id)
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                script.inflight += 1
                script.max_inflight = max(script.max_inflight, script.inflight)
            time.sleep(script.delay)
            text, finish, tokens = script.replies.get(case.id, (right_answer(case.id),
                                                                "stop", 20))
            status = script.status.get(case.id, 200)
            payload = json.dumps({"choices": [{"message": {"role": "assistant",
                                                           "content": text},
                                               "finish_reason": finish}],
                                  "usage": {"completion_tokens": tokens}} if status == 200
                                 else {"error": {"message": "nope"}}).encode()
            with script.lock:
                script.inflight -= 1
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Endpoint(f"http://127.0.0.1:{server.server_address[1]}/v1/", "fake"), script
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def pick(*ids: str) -> list[Any]:
    return [BY_ID[i] for i in ids]


def test_scores_replies_and_counts_reasons(fake: tuple[Endpoint, Script]) -> None:
    endpoint, script = fake
    cases = pick("simple-01", "simple-02", "multiple-01", "parallel-01", "irrelevance-01",
                 "irrelevance-02")
    script.replies["simple-02"] = ("Sure, here it is.", "stop", 5)
    script.replies["irrelevance-02"] = (right_answer("simple-01"), "stop", 20)
    script.replies["parallel-01"] = ('{"tool": "calculator", "args": {"expression": "1' +
                                     " " * 60, "length", 64)
    report = run_cases(endpoint, cases, ToolCallSettings(min_pass_rate=0.5, max_tokens=64))
    assert [s.case_id for s in report.samples] == [c.id for c in cases]
    assert [s.reason for s in report.samples] == ["pass", "prose", "pass", "runaway", "pass",
                                                  "unexpected_call"]
    assert (report.overall.passed, report.overall.total) == (3, 6)
    assert report.ok and report.reasons() == {"prose": 1, "runaway": 1, "unexpected_call": 1}
    assert report.runaways()[0].completion_tokens == 64
    assert report.to_dict()["runaway_tokens"] == [64]
    assert report.base_url.endswith(str(endpoint.root.rsplit(":", 1)[1]))
    body = script.bodies[0]
    assert (body["temperature"], body["seed"], body["max_tokens"]) == (0.0, 0, 64)
    assert "response_format" not in body
    assert "User request: " in body["messages"][0]["content"]  # the transformers template


def test_constrained_bodies_carry_the_envelope_schema(fake: tuple[Endpoint, Script]) -> None:
    endpoint, _ = fake
    settings = ToolCallSettings(constrained=True, template="llamacpp")
    simple = request_body(BY_ID["multiple-01"], endpoint, settings)
    schema = simple["response_format"]["json_schema"]["schema"]
    assert [o["properties"]["tool"]["const"] for o in schema["anyOf"]] == \
        BY_ID["multiple-01"].tool_names
    assert simple["messages"][0]["content"].endswith("\nJSON:")
    parallel = request_body(BY_ID["parallel-01"], endpoint, settings)["response_format"]
    assert parallel["json_schema"]["schema"]["anyOf"][-1]["type"] == "array"
    custom = ToolCallSettings(template="T:{tools}|{prompt}")
    assert request_body(BY_ID["simple-01"], endpoint, custom)["messages"][0]["content"] \
        .endswith("|" + BY_ID["simple-01"].prompt)


def test_transport_errors_are_retried_http_errors_are_not(fake: tuple[Endpoint, Script]
                                                          ) -> None:
    endpoint, script = fake
    script.drop_first = {"simple-01"}
    script.status["simple-02"] = 500
    report = run_cases(endpoint, pick("simple-01", "simple-02"), ToolCallSettings(retries=1))
    first, second = report.samples
    assert (first.reason, first.attempts) == ("pass", 2)
    assert (second.reason, second.attempts) == ("request_failed", 1)
    assert "HTTP 500" in second.detail


def test_a_dead_endpoint_fails_every_sample_after_retries() -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    report = run_cases(Endpoint(f"http://127.0.0.1:{port}", "m"), pick("simple-01"),
                       ToolCallSettings(retries=2))
    assert report.samples[0].reason == "request_failed"
    assert report.samples[0].attempts == 3
    assert not report.ok


def test_concurrency_is_bounded(fake: tuple[Endpoint, Script]) -> None:
    endpoint, script = fake
    script.delay = 0.15
    report = run_cases(endpoint, CASES[:12], ToolCallSettings(concurrency=3))
    assert report.overall.passed == 12
    assert script.max_inflight == 3


def test_run_tool_calls_samples_the_builtin_set(fake: tuple[Endpoint, Script]) -> None:
    endpoint, _ = fake
    report = run_tool_calls(endpoint, ToolCallSettings(samples=8, concurrency=8))
    assert report.overall.total == 8 and report.ok
    assert set(report.by_category()) == {"simple", "multiple", "parallel", "irrelevance"}


def test_native_tool_calls_map_to_envelopes() -> None:
    message = {"tool_calls": [{"id": "a", "function": {"name": "echo",
                                                       "arguments": '{"text": "x"}'}}]}
    assert json.loads(reply_text(message)) == {"tool": "echo", "args": {"text": "x"},
                                               "id": "a"}
    assert reply_text({"content": None}) == ""


def test_settings_are_validated() -> None:
    for bad in ({"samples": 0}, {"min_pass_rate": 1.5}, {"concurrency": 0}):
        with pytest.raises(UsageError):
            ToolCallSettings(**bad)  # type: ignore[arg-type]


def test_settings_from_a_yaml_block() -> None:
    settings = ToolCallSettings.from_dict({"cases": "builtin", "min_pass_rate": 0.9,
                                           "samples": 40, "constrained": False})
    assert (settings.samples, settings.min_pass_rate, settings.constrained) == (40, 0.9, False)
    with pytest.raises(UsageError, match=r"checks\.tool_calls: unknown key 'min_passrate'"):
        ToolCallSettings.from_dict({"min_passrate": 0.9}, "checks.tool_calls")
    with pytest.raises(UsageError, match=r"tool_calls.samples: '40' is not int"):
        ToolCallSettings.from_dict({"samples": "40"})
    with pytest.raises(UsageError, match=r"tool_calls.constrained: 1 is not bool"):
        ToolCallSettings.from_dict({"constrained": 1})
    with pytest.raises(UsageError, match=r"tool_calls.samples: True is not int"):
        ToolCallSettings.from_dict({"samples": True})

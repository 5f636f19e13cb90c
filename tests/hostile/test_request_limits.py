"""Request limits (issue 13, item 13): size, depth and shape of a request never cost the
server more than a clear 4xx, and no answer carries an exception text.

The faults: a 50 MB prompt was tokenized before the context check (667 MB RSS on the
transformers server); a 100k-deep JSON body raised RecursionError in the llama.cpp layer (a
500); ``tool_choice: {"function": "f"}`` was a 500 quoting the AttributeError.  Now every
OWLLM server refuses a body over its cap with 413 before reading it, deep JSON and wrong
shapes with an OpenAI-shaped 400 (schema-level validation included: OpenAI answers 400, not
422), and a prompt longer than the context can hold before tokenizing it.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from tests.hostile._real_servers import (
    Endpoint,
    ToolProcess,
    error_of,
    hostile_servers,  # noqa: F401  (the fixture that stops the model servers)
    model_server,
    raw_exchange,
    start_tool_server,
    tool_error_of,
)

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Hi"}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
DEFAULT_CAP = 16 << 20


@pytest.fixture(params=["transformers", "llamacpp",
                        pytest.param("vllm", marks=pytest.mark.slow)])
def model(request: pytest.FixtureRequest) -> Endpoint:
    return model_server(request, request.param)


@pytest.fixture(params=["transformers", "llamacpp"])
def owllm_model(request: pytest.FixtureRequest) -> Endpoint:
    """The model servers whose request handling is OWLLM's own code."""
    return model_server(request, request.param)


def post_head(server: Endpoint, path: str, length: int, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Authorization: Bearer {server.key}\r\nContent-Type: application/json\r\n"
            f"{extra}Content-Length: {length}\r\n\r\n").encode()


def test_a_huge_body_is_refused_before_it_is_read(model: Endpoint) -> None:
    # Claims 50 MB and sends 1 KB: an answer proves the server did not wait for the rest.
    status, body, seconds = raw_exchange(
        model.port, post_head(model, CHAT, 50_000_000) + b'{"messages": "' + b"x" * 1000,
        timeout=20)
    assert status == 413, body[:300]
    assert seconds < 5
    error = json.loads(body)["error"]
    assert error["code"] == "request_too_large" and "OWLLM_MAX_BODY_BYTES" in error["message"]
    assert model.request("GET", "/health").status_code == 200


def test_a_chunked_body_is_cut_at_the_cap(owllm_model: Endpoint) -> None:
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
            f"{owllm_model.key}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    piece = b"x" * (1 << 20)
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    reply = b""
    with socket.create_connection(("127.0.0.1", owllm_model.port), timeout=30) as sock:
        sock.sendall(head)
        for sent in range(1, (DEFAULT_CAP >> 20) + 8):
            sock.sendall(chunk)
            # past the cap, stop sending once the answer is there (more bytes after the
            # server closed would make its kernel reset the connection)
            if sent > DEFAULT_CAP >> 20 and select.select([sock], [], [], 0.2)[0]:
                break
        with contextlib.suppress(OSError):
            while chunk_in := sock.recv(65536):
                reply += chunk_in
    head_in, _, body = reply.partition(b"\r\n\r\n")
    assert head_in.startswith(b"HTTP/1.1 413"), reply[:300]
    assert json.loads(body)["error"]["code"] == "request_too_large"


def test_deep_json_is_a_400(model: Endpoint) -> None:
    for raw in ("[" * 100_000 + "]" * 100_000,  # RecursionError in the llama.cpp layer
                json.dumps({"messages": HELLO, "metadata": json.loads("[" * 150 + "]" * 150)})):
        response = model.request("POST", CHAT, content=raw.encode(),
                                 headers={"Content-Type": "application/json"})
        assert error_of(response, 400)["code"] == "json_too_deep"
    assert model.request("GET", "/health").status_code == 200


def test_wrong_shapes_are_client_errors_without_exception_text(owllm_model: Endpoint) -> None:
    cases: list[dict[str, Any]] = [
        {"messages": HELLO, "tools": TOOLS, "tool_choice": {"function": "f"}},  # the report
        {"messages": HELLO, "tools": TOOLS, "tool_choice": "sometimes"},
        {"messages": HELLO, "tools": [{"type": "function", "function": "f"}]},
        {"messages": "hello"},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]},
    ]
    for body in cases:
        response = owllm_model.request("POST", CHAT, json={**body, "max_tokens": 2})
        error = error_of(response, 400)
        assert error["type"] == "invalid_request_error"
        assert error["param"] in ("tool_choice", "tools", "tools[0]", "messages"), error
    not_json = owllm_model.request("POST", CHAT, content=b"{not json",
                                   headers={"Content-Type": "application/json"})
    assert "not valid JSON" in error_of(not_json, 400)["message"]
    # odd but valid values are served
    seeded = owllm_model.request("POST", CHAT, json={"messages": HELLO, "max_tokens": 2,
                                                     "seed": 10**30, "temperature": 1.0})
    assert seeded.status_code == 200, seeded.text


def test_a_prompt_longer_than_the_context_is_refused_before_tokenizing(
        owllm_model: Endpoint) -> None:
    """9 MB of prompt: under the body cap, far over 512 tokens.  Tokenizing it cost seconds
    and hundreds of MB (the transformers server) or the model's lock (llama.cpp)."""
    proc = psutil.Process(owllm_model.pid)
    before = proc.memory_info().rss
    peak = [before]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.02):
            try:
                peak.append(proc.memory_info().rss)
            except psutil.Error:
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        started = time.monotonic()
        for path, body in (("/v1/completions", {"prompt": "ab " * 3_000_000}),
                           (CHAT, {"messages": [{"role": "user", "content": "ab " * 3_000_000}]})):
            response = owllm_model.request("POST", path, json={**body, "max_tokens": 2},
                                           timeout=120)
            error = error_of(response, 400)
            assert error["code"] == "context_length_exceeded"
            assert "characters, more than fit" in error["message"]
        seconds = time.monotonic() - started
    finally:
        done.set()
        watcher.join()
    assert seconds < 4, seconds
    assert max(peak) - before < 200 << 20, (max(peak) - before) >> 20


def test_llamacpp_answers_with_the_model_id_not_the_gguf_path(request: pytest.FixtureRequest
                                                              ) -> None:
    server = model_server(request, "llamacpp")
    response = server.request("POST", "/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == server.model
    assert ".gguf" not in response.text


# -- the tool server --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToolProcess]:
    server = start_tool_server(tmp_path_factory.mktemp("limits-tools"))
    yield server
    assert server.stop() == 0


def test_tool_server_errors_carry_no_exception_text(tools: ToolProcess) -> None:
    server = tools.endpoint
    for tool, status, code in (("crash", 500, "tool_crashed"), ("not_json", 500, "bad_result"),
                               ("leave", 500, "tool_crashed")):
        response = server.request("POST", "/call", json={"tool": tool, "args": {}, "id": "a"})
        error = tool_error_of(response, status)
        assert error["code"] == code and "boom" not in error["message"]
        assert "object at 0x" not in error["message"]
    assert "boom" in tools.endpoint.log.read_text()  # the details are in the log
    status, body, _ = raw_exchange(server.port, b"GET / x HTTP/1.1\r\n\r\n")
    assert status == 400 and json.loads(body)["error"]["code"] == "bad_request"
    status, body, _ = raw_exchange(server.port, b"PATCH /call HTTP/1.1\r\nHost: 127.0.0.1"
                                                b"\r\n\r\n")
    assert status == 405 and json.loads(body)["error"]["code"] == "method_not_allowed"

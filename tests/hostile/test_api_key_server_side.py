"""API keys, the servers' side (issue 13, item 4): with a key in its environment, a server
answers nothing but ``/health`` without ``Authorization: Bearer <key>``.

The contract with the launcher (tests/hostile/test_api_key.py covers OWLLM's side): the key
arrives as ``OWLLM_API_KEY`` (``VLLM_API_KEY`` for vLLM), never on the command line.  The
transformers server, the llama.cpp layer and vLLM's OWLLM middleware answer a missing or
wrong key with an OpenAI-shaped 401 (vLLM itself guards only its ``/v1``-style prefixes);
the tool server with its own error shape.  The key never shows in a log, a command line or
a response.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.hostile._real_servers import (
    KEY,
    Endpoint,
    ToolProcess,
    error_of,
    hostile_servers,  # noqa: F401  (the fixture that stops the model servers)
    model_server,
    start_tool_server,
    tool_error_of,
)

WRONG = ["", "Bearer", f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", f"Basic {KEY}",
         KEY, f"Token {KEY}"]
# Routes that must not answer without the key, per backend, besides the OpenAI ones.
EXTRA_ROUTES = {"transformers": ["/openapi.json", "/docs"],
                "llamacpp": ["/openapi.json"],
                "vllm": ["/version", "/metrics", "/ping", "/tokenize"]}
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@pytest.fixture(params=["transformers", "llamacpp",
                        pytest.param("vllm", marks=pytest.mark.slow)])
def model(request: pytest.FixtureRequest) -> tuple[str, Endpoint]:
    return request.param, model_server(request, request.param)


def assert_key_stays_secret(pid: int, log: Path, *texts: str) -> None:
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for proc in procs:
        try:
            assert KEY not in " ".join(proc.cmdline()), f"the key is on {proc.pid}'s cmdline"
        except psutil.Error:
            continue
    assert KEY not in log.read_text(errors="replace"), f"the key leaked into {log}"
    for text in texts:
        assert KEY not in text


def test_model_server_requires_the_key(model: tuple[str, Endpoint]) -> None:
    backend, server = model
    answers = []
    for method, path, body in (("GET", "/v1/models", None),
                               ("POST", "/v1/chat/completions", CHAT),
                               ("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 2}),
                               *(("GET", p, None) for p in EXTRA_ROUTES[backend])):
        missing = server.request(method, path, auth=False, json=body)
        error = error_of(missing, 401)
        assert error["code"] == "invalid_api_key", (path, error)
        assert missing.headers.get("www-authenticate") == "Bearer"
        answers.append(missing.text)
        for header in WRONG:
            wrong = server.request(method, path, headers={"Authorization": header}, json=body)
            assert wrong.status_code == 401, (path, header, wrong.text[:200])
            answers.append(wrong.text)
    # liveness needs no key; the key (any case of "Bearer") opens everything else
    assert server.request("GET", "/health", auth=False).status_code == 200
    for scheme in ("Bearer", "bearer"):
        ok = server.request("POST", "/v1/chat/completions", json={**CHAT, "model": server.model},
                            headers={"Authorization": f"{scheme} {KEY}"})
        assert ok.status_code == 200, ok.text
        answers.append(ok.text)
    assert server.request("GET", "/v1/models").status_code == 200
    assert_key_stays_secret(server.pid, server.log, *answers)


# -- the tool server --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToolProcess]:
    server = start_tool_server(tmp_path_factory.mktemp("keyed-tools"),
                               env={"OWLLM_API_KEY": KEY}, key=KEY)
    yield server
    assert server.stop() == 0


def test_tool_server_requires_the_key(tools: ToolProcess) -> None:
    server = tools.endpoint
    call = {"tool": "calculator", "args": {"expression": "2*21"}, "id": "k"}
    answers = []
    for header in [None, *WRONG]:
        headers = {} if header is None else {"Authorization": header}
        for method, path, body in (("GET", "/tools", None), ("POST", "/call", call),
                                   ("GET", "/nowhere", None)):
            response = server.request(method, path, auth=False, headers=headers, json=body)
            assert tool_error_of(response, 401)["code"] == "unauthorized", (path, header)
            assert response.headers.get("www-authenticate") == "Bearer"
            answers.append(response.text)
    health = server.request("GET", "/health", auth=False)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert server.request("GET", "/tools").status_code == 200
    done = server.request("POST", "/call", json=call)
    assert done.status_code == 200 and done.json()["result"] == 42
    assert_key_stays_secret(server.pid, server.log, *answers, health.text, done.text)


def test_tool_server_without_a_key_is_open(tmp_path: Path) -> None:
    server = start_tool_server(tmp_path)  # OWLLM_API_KEY is removed from its environment
    try:
        assert server.endpoint.request("GET", "/tools").status_code == 200
    finally:
        assert server.stop() == 0

"""Cross-site requests (issue 13, item 3): a web page must not drive OWLLM's servers.

The fault: ``curl -X POST :PORT/call -H 'Host: evil.example' -H 'Origin: http://evil.example'
-H 'Content-Type: text/plain' --data '{"tool": "calculator", ...}'`` answered 200.  A browser
sends such a "simple" request cross-site without a preflight, and a page that rebinds its DNS
name to 127.0.0.1 reads ``/tools`` and results (its requests carry ``Host: evil.example``).
The model servers answered any Host too.  Now every OWLLM server (tool server,
transformers server, the llama.cpp layer, vLLM through ``--middleware``) answers only
loopback Host headers (plus ``OWLLM_ALLOWED_HOSTS``), refuses a cross-site ``Origin`` and
takes only ``application/json`` bodies.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from owllm.inenv.asgi_guard import bind_warning, host_allowed, origin_allowed
from tests.hostile._real_servers import (
    ALLOWED,
    EVIL,
    Endpoint,
    ToolProcess,
    error_of,
    hostile_servers,  # noqa: F401  (the fixture that stops the model servers)
    model_server,
    start_tool_server,
    tool_error_of,
)

CALL = '{"tool": "calculator", "args": {"expression": "6*7"}, "id": "c1"}'
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToolProcess]:
    server = start_tool_server(tmp_path_factory.mktemp("cross-site-tools"),
                               env={"OWLLM_ALLOWED_HOSTS": ALLOWED})
    yield server
    assert server.stop() == 0


@pytest.fixture(params=["transformers", "llamacpp",
                        pytest.param("vllm", marks=pytest.mark.slow)])
def model(request: pytest.FixtureRequest) -> Endpoint:
    return model_server(request, request.param)


# -- the tool server --------------------------------------------------------------------------

def test_the_reported_simple_request_is_refused(tools: ToolProcess) -> None:
    server = tools.endpoint
    response = server.request("POST", "/call", host=EVIL, origin=f"http://{EVIL}",
                              headers={"Content-Type": "text/plain"}, content=CALL)
    assert tool_error_of(response, 403)["code"] == "forbidden_host"
    # each part on its own is refused too
    only_origin = server.request("POST", "/call", origin=f"http://{EVIL}",
                                 headers={"Content-Type": "application/json"}, content=CALL)
    assert tool_error_of(only_origin, 403)["code"] == "cross_origin"
    sandboxed = server.request("POST", "/call", origin="null",
                               headers={"Content-Type": "application/json"}, content=CALL)
    assert tool_error_of(sandboxed, 403)["code"] == "cross_origin"
    only_type = server.request("POST", "/call", headers={"Content-Type": "text/plain"},
                               content=CALL)
    assert tool_error_of(only_type, 415)["code"] == "unsupported_media_type"
    form = server.request("POST", "/call", content=CALL, headers={
        "Content-Type": "application/x-www-form-urlencoded"})
    assert tool_error_of(form, 415)["code"] == "unsupported_media_type"
    # the same call, sent as OWLLM's clients send it, works
    ok = server.request("POST", "/call", headers={"Content-Type": "application/json"},
                        content=CALL)
    assert ok.status_code == 200 and ok.json()["result"] == 42


def test_dns_rebinding_cannot_read_the_tool_server(tools: ToolProcess) -> None:
    server = tools.endpoint
    for path in ("/tools", "/health", "/call"):
        response = server.request("GET", path, host=f"{EVIL}:{server.port}")
        assert tool_error_of(response, 403)["code"] == "forbidden_host"
    assert "calculator" not in server.request("GET", "/tools", host=EVIL).text


def test_tool_server_answers_loopback_names_and_the_allow_list(tools: ToolProcess) -> None:
    server = tools.endpoint
    port = server.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}",
                 f"LOCALHOST:{port}", f"{ALLOWED}:{port}"):
        assert server.request("GET", "/tools", host=host).status_code == 200, host
    for origin in (f"http://localhost:{port}", "http://127.0.0.1:5173", "https://[::1]",
                   f"http://{ALLOWED}"):
        response = server.request("POST", "/call", origin=origin, content=CALL,
                                  headers={"Content-Type": "application/json; charset=utf-8"})
        assert response.status_code == 200, (origin, response.text)
    for host in ("127.0.0.1.evil.example", "localhost.evil.example", "127.0.0.1:x", ""):
        response = server.request("GET", "/tools", host=host)
        assert response.status_code == 403, host


# -- model servers ----------------------------------------------------------------------------

def test_model_server_refuses_cross_site_requests(model: Endpoint) -> None:
    chat = "/v1/chat/completions"
    reported = model.request("POST", chat, host=EVIL, origin=f"http://{EVIL}", auth=False,
                             headers={"Content-Type": "text/plain"}, json=CHAT)
    assert error_of(reported, 403)["code"] == "forbidden_host"
    rebinding = model.request("GET", "/v1/models", host=f"{EVIL}:{model.port}")
    assert error_of(rebinding, 403)["code"] == "forbidden_host"
    health = model.request("GET", "/health", host=EVIL)
    assert error_of(health, 403)["code"] == "forbidden_host"
    cross = model.request("POST", chat, origin=f"http://{EVIL}:8080", json=CHAT)
    assert error_of(cross, 403)["code"] == "cross_origin"
    preflight = model.request("OPTIONS", chat, origin=f"http://{EVIL}", headers={
        "Access-Control-Request-Method": "POST"})
    assert error_of(preflight, 403)["code"] == "cross_origin"
    assert "access-control-allow-origin" not in preflight.headers
    for content_type in ("text/plain", "application/x-www-form-urlencoded",
                         "multipart/form-data; boundary=x"):
        simple = model.request("POST", chat, content=b'{"messages": []}',
                               headers={"Content-Type": content_type})
        assert error_of(simple, 415)["code"] == "unsupported_media_type"


def test_model_server_answers_loopback_names_and_the_allow_list(model: Endpoint) -> None:
    for host in (f"127.0.0.1:{model.port}", f"localhost:{model.port}", f"[::1]:{model.port}",
                 ALLOWED):
        response = model.request("GET", "/v1/models", host=host)
        assert response.status_code == 200, (host, response.text)
    response = model.request("POST", "/v1/chat/completions", origin="http://localhost:3000",
                             json={**CHAT, "model": model.model})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["role"] == "assistant"


# -- the policy (servers bound elsewhere than loopback cannot be started in these tests) ------

def test_policy_and_the_loud_warning_off_loopback() -> None:
    assert host_allowed("127.0.0.1:8080") and host_allowed("[::1]") and host_allowed("localhost")
    assert not host_allowed(None) and not host_allowed("evil.example")
    assert not host_allowed("::1")  # an IPv6 Host must be bracketed
    assert host_allowed("my.lan:80", frozenset({"my.lan"})) and host_allowed("x", frozenset("*"))
    assert origin_allowed(None) and not origin_allowed("null")
    assert not origin_allowed("file://") and not origin_allowed("http://localhost:bad")
    assert bind_warning("127.0.0.1", frozenset()) is None
    assert bind_warning("::1", frozenset()) is None
    for host in ("0.0.0.0", "::", "192.168.1.5"):
        warning = bind_warning(host, frozenset())
        assert warning and "NOT loopback" in warning and "OWLLM_API_KEY" in warning
    assert "rebinding" in str(bind_warning("127.0.0.1", frozenset("*")))


def test_tool_server_reads_its_allow_list_from_the_environment(tmp_path: Path) -> None:
    server = start_tool_server(tmp_path, env={"OWLLM_ALLOWED_HOSTS": "tools.lan, other.lan"})
    try:
        assert server.endpoint.request("GET", "/tools", host="other.lan:1").status_code == 200
        assert server.endpoint.request("GET", "/tools", host=ALLOWED).status_code == 403
    finally:
        assert server.stop() == 0


def test_turning_the_check_off_is_explicit_and_loud(tmp_path: Path) -> None:
    server = start_tool_server(tmp_path, env={"OWLLM_ALLOWED_HOSTS": "*"})
    try:
        assert server.endpoint.request("GET", "/tools", host=EVIL).status_code == 200
        assert "WARNING: OWLLM_ALLOWED_HOSTS=* turns the Host check off" in \
            server.endpoint.log.read_text()
    finally:
        assert server.stop() == 0

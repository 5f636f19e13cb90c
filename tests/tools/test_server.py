"""The tool server as a real process: endpoints, typed errors, limits, timeouts, shutdown."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from owllm.tools import ToolServerError
from owllm.tools.client import ToolServerClient
from owllm.tools.server import MAX_BODY
from tests.tools.conftest import ServerProcess, tools_config

JSON = {"Content-Type": "application/json"}  # the only body type the server takes


def post(server: ServerProcess, body: object) -> httpx.Response:
    return httpx.post(server.url + "/call", json=body, timeout=10)


def test_ready_file_reports_the_real_port(tool_server: ServerProcess) -> None:
    info = tool_server.info
    assert set(info) == {"url", "host", "port", "pid"}
    assert info["pid"] == tool_server.proc.pid
    assert info["port"] > 0 and info["url"] == f"http://127.0.0.1:{info['port']}"


def test_health_and_tools(tool_server: ServerProcess) -> None:
    health = httpx.get(tool_server.url + "/health").json()
    assert health["status"] == "ok" and health["pid"] == tool_server.proc.pid
    assert {"calculator", "echo", "current_time", "hang", "add_tool"} <= set(health["tools"])
    specs = httpx.get(tool_server.url + "/tools").json()["tools"]
    by_name = {s["function"]["name"]: s for s in specs}
    assert by_name["calculator"]["type"] == "function"
    assert by_name["add_tool"]["function"]["description"] == "Add two integers."
    assert by_name["add_tool"]["function"]["parameters"]["required"] == ["a", "b"]


def test_successful_calls(tool_server: ServerProcess) -> None:
    response = post(tool_server, {"tool": "calculator", "args": {"expression": "42*17"},
                                  "id": "c1"})
    assert response.status_code == 200
    assert response.json() == {"id": "c1", "tool": "calculator", "result": 714}
    assert post(tool_server, {"tool": "echo", "args": {"text": "hé"}, "id": "e"}).json()[
        "result"] == "hé"
    assert post(tool_server, {"tool": "add_tool", "args": {"a": 2, "b": 3}, "id": "x"}).json()[
        "result"] == 5
    now = post(tool_server, {"tool": "current_time", "args": {}, "id": "t"}).json()["result"]
    assert now.endswith("+00:00")


@pytest.mark.parametrize(("body", "status", "code", "path"), [
    ("not json", 400, "invalid_json", "$"),
    ('{"tool": "calculator", "args": {}, "id": "a"} trailing', 400, "invalid_json", "$"),
    ("[1]", 400, "not_an_object", "$[0]"),
    ('{"tool": "nope", "args": {}, "id": "a"}', 400, "unknown_tool", "$.tool"),
    ('{"tool": "calculator", "args": {}, "id": ""}', 400, "bad_id", "$.id"),
    ('{"tool": "calculator", "args": {}, "id": "a"}', 422, "missing_required",
     "$.args.expression"),
    ('{"tool": "calculator", "args": {"expression": 1}, "id": "a"}', 422, "type_error",
     "$.args.expression"),
    ('{"tool": "add_tool", "args": {"a": 1, "b": 2, "c": 3}, "id": "a"}', 422,
     "unexpected_param", "$.args.c"),
    ('{"tool": "calculator", "args": {"expression": "1/0"}, "id": "a"}', 422,
     "calculator_error", "$.args"),
    ('{"tool": "calculator", "args": {"expression": "__import__(\'os\')"}, "id": "a"}', 422,
     "calculator_error", "$.args"),
    ('{"tool": "refuse", "args": {}, "id": "a"}', 422, "refused", "$.args"),
    ('{"tool": "crash", "args": {}, "id": "a"}', 500, "tool_crashed", "$"),
    ('{"tool": "leave", "args": {}, "id": "a"}', 500, "tool_crashed", "$"),
    ('{"tool": "not_json", "args": {}, "id": "a"}', 500, "bad_result", "$"),
    ("[" * 100_000, 400, "too_deep", "$"),
    ('{"a":' * 40 + "1" + "}" * 40, 400, "too_deep", "$" + ".a" * 32),
])
def test_typed_errors(tool_server: ServerProcess, body: str, status: int, code: str,
                      path: str) -> None:
    response = httpx.post(tool_server.url + "/call", content=body.encode(), timeout=10,
                          headers=JSON)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["path"]) == (code, path)
    assert error["message"]
    assert httpx.get(tool_server.url + "/health").json()["status"] == "ok"  # still up


def test_routes_and_methods(tool_server: ServerProcess) -> None:
    missing = httpx.get(tool_server.url + "/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = httpx.get(tool_server.url + "/call")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


def test_oversized_body_is_refused_before_reading(tool_server: ServerProcess) -> None:
    # Claims 10 GB and sends nothing: an answer proves the server did not wait for the body.
    with socket.create_connection(("127.0.0.1", tool_server.info["port"]), timeout=5) as sock:
        sock.sendall(b"POST /call HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: 10000000000\r\n\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") or head.startswith(b"HTTP/1.0 413")
    assert json.loads(body)["error"]["code"] == "too_large"


def test_oversized_real_body_gets_413(tool_server: ServerProcess) -> None:
    response = httpx.post(tool_server.url + "/call", content=b" " * (MAX_BODY + 10), timeout=10,
                          headers=JSON)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"


def test_hanging_tool_times_out_while_health_answers(tool_server: ServerProcess) -> None:
    results: dict[str, httpx.Response] = {}

    def call() -> None:
        results["hang"] = post(tool_server, {"tool": "hang", "args": {}, "id": "h"})

    started = time.monotonic()
    thread = threading.Thread(target=call)
    thread.start()
    # /health answers while the tool hangs (the hung thread keeps its in-flight slot)
    while True:
        health = httpx.get(tool_server.url + "/health", timeout=2)
        assert health.status_code == 200
        if health.json()["inflight"] >= 1 or time.monotonic() - started > 3:
            break
        time.sleep(0.02)
    assert health.json()["inflight"] >= 1
    thread.join(10)
    elapsed = time.monotonic() - started
    response = results["hang"]
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout" and response.json()["id"] == "h"
    assert elapsed < 5  # the tool's own timeout is 0.5 s
    again = post(tool_server, {"tool": "calculator", "args": {"expression": "1+1"}, "id": "z"})
    assert again.json()["result"] == 2


def test_client_helper(tool_server: ServerProcess) -> None:
    with ToolServerClient(tool_server.url) as client:
        assert client.health()["status"] == "ok"
        assert "echo" in [s["function"]["name"] for s in client.list_tools()]
        assert client.call({"tool": "echo", "args": {"text": "x"}, "id": "1"})["result"] == "x"
        with pytest.raises(ToolServerError) as err:
            client.call({"tool": "calculator", "args": {}, "id": "1"})
        assert (err.value.status, err.value.code, err.value.path) == (
            422, "missing_required", "$.args.expression")
    with pytest.raises(ToolServerError) as down:
        ToolServerClient("http://127.0.0.1:9", timeout=2).health()
    assert down.value.status == 0 and down.value.code == "unreachable"


def test_sigterm_stops_cleanly_even_with_a_hung_tool(
        server_factory: Callable[..., ServerProcess], tmp_path: Path) -> None:
    server = server_factory("--tools-config", str(tools_config(tmp_path)), "--timeout", "0.3")
    assert post(server, {"tool": "hang", "args": {"seconds": 60}, "id": "h"}).status_code == 504
    pid = server.proc.pid
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0
    assert not server.ready_file.exists()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_port_in_use_and_bad_config_exit_2(server_factory: Callable[..., ServerProcess],
                                           tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = server_factory("--port", str(port), wait=False)
        assert server.proc.wait(20) == 2
    assert "cannot listen" in server.log.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("tools:\n  - function: no_such_module_xyz:f\n", encoding="utf-8")
    broken = server_factory("--tools-config", str(bad), wait=False)
    assert broken.proc.wait(20) == 2
    assert "no_such_module_xyz" in broken.log.read_text()


def test_owllm_config_tools_and_call_timeout(server_factory: Callable[..., ServerProcess],
                                             tmp_path: Path) -> None:
    """``--config`` serves llm_backends.yaml's tools: entries and takes its call timeout;
    ``--call-timeout`` overrides it."""
    config = tmp_path / "proj" / "configs" / "llm_backends.yaml"
    config.parent.mkdir(parents=True)
    (config.parent.parent / "proj_tools_mod.py").write_text(
        "import time\n\ndef nap(seconds):\n    time.sleep(seconds)\n    return 'rested'\n",
        encoding="utf-8")
    config.write_text("""models: {}
tools:
  - callable: proj_tools_mod:nap
    parameters: {type: object, properties: {seconds: {type: number, maximum: 5}},
                 required: [seconds], additionalProperties: false}
tool_server: {call_timeout_s: 0.4}
""", encoding="utf-8")
    server = server_factory("--config", str(config))
    names = httpx.get(server.url + "/health").json()["tools"]
    assert "nap" in names and "calculator" in names
    assert post(server, {"tool": "nap", "args": {"seconds": 0}, "id": "a"}).json()[
        "result"] == "rested"
    slow = post(server, {"tool": "nap", "args": {"seconds": 2}, "id": "b"})
    assert slow.status_code == 504 and slow.json()["error"]["code"] == "timeout"
    patient = server_factory("--config", str(config), "--call-timeout", "5")
    assert post(patient, {"tool": "nap", "args": {"seconds": 0.6}, "id": "c"}).json()[
        "result"] == "rested"

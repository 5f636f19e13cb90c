"""``backend: remote``: an OpenAI-compatible endpoint OWLLM did not start, validated through
the same CLI, smokes and suites.

The endpoint is real: OWLLM's own transformers server (``owllm.inenv.transformers_app``)
launched by this module as a plain subprocess, outside OWLLM's manager, with an API key and
a served name that differs from the config's model id.  Every OWLLM command runs as a real
``python -m owllm`` / ``python -m pytest`` process against a tmp home.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from owllm import httpclient
from owllm.config import load_config
from owllm.envs import EnvRegistry
from owllm.envs.runner import inenv_argv, run_in_env
from owllm.errors import ConfigError, ServerError
from owllm.servers.manager import LLMServerManager
from tests.inenv.conftest import CACHE_HOME, ENV_KEY, Server, free_port, server_config
from tests.procs import die_with_parent, gone

REPO = Path(__file__).resolve().parents[2]
KEY = "s3cret-remote-key"
SERVED = "tiny-served"  # the endpoint's name for the model; the config's id is "ext"


def _config_problems(tmp_path: Path, entry: str) -> list[str]:
    path = Path("cfg.yaml")  # relative: the messages name it as given
    path.write_text("models:\n  m:\n" + textwrap.indent(textwrap.dedent(entry), "    "))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


# -- config ------------------------------------------------------------------------------

def test_remote_entry_loads_without_base_model(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("models:\n  m:\n    backend: remote\n    base_url: https://h.example/v1\n"
                    "    served_model: org/Model-7B\n    api_key_env: MY_KEY\n"
                    "    headers: {X-Team: qa}\n    timeout_s: 5\n")
    model = load_config(path).models["m"]
    assert (model.base_url, model.served_model, dict(model.headers), model.timeout_s) == (
        "https://h.example/v1", "org/Model-7B", {"X-Team": "qa"}, 5)
    assert model.params()["headers"] == ["X-Team"]  # header names only: values may be keys


@pytest.mark.parametrize(("entry", "expected"), [
    ("backend: remote\n", ["cfg.yaml:2: models.m: missing required key 'base_url'"]),
    ("backend: remote\nbase_url: ftp://h/v1\n", ["cfg.yaml:4: models.m.base_url:"]),
    ("backend: remote\nbase_url: https://u:pw@h/v1\n",
     ["cfg.yaml:4: models.m.base_url: base_url must not carry credentials"]),
    ("backend: remote\nbase_url: http://h/v1\nenv_key: x\n",
     ["cfg.yaml:5: models.m.env_key: env_key configures a server OWLLM launches"]),
    ("backend: remote\nbase_url: http://h/v1\nheaders: {Authorization: Bearer x}\n",
     ["cfg.yaml:5: models.m.headers: header 'Authorization': use api_key_env"]),
    ("base_model: demo://tiny-llama\nbase_url: http://h/v1\ntimeout_s: 3\n",
     ["cfg.yaml:4: models.m.base_url: base_url configures an existing endpoint and applies "
      "to backend: remote only, not transformers",
      "cfg.yaml:5: models.m.timeout_s: timeout_s configures an existing endpoint"]),
], ids=["no-base-url", "not-http", "credentials", "launch-field", "auth-header",
        "fields-on-another-backend"])
def test_remote_fields_are_validated_with_file_and_line(tmp_path: Path, entry: str,
                                                         expected: list[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    found = sorted(_config_problems(tmp_path, entry))
    assert len(found) == len(expected), found
    for got, want in zip(found, sorted(expected), strict=True):
        assert got.startswith(want), found


def test_row_headers_and_served_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_KEY", "k1")
    row = {"model_id": "ext", "extra": {"api_key_env": "GW_KEY", "served_model": "org/M",
                                        "headers": {"X-Team": "qa"}}}
    assert httpclient.row_headers(row) == {"X-Team": "qa", "Authorization": "Bearer k1"}
    assert httpclient.served_model(row) == "org/M"
    assert httpclient.served_model({"model_id": "demo", "extra": {}}) == "demo"
    assert httpclient.safe_url("https://u:pw@h.example:8443/v1?token=x") == \
        "https://h.example:8443/v1"


# -- a small in-process endpoint: what OWLLM sends, and what it lacks --------------------

class _Endpoint(BaseHTTPRequestHandler):
    """Lists one model and answers completions; refuses ``response_format`` (400), as an
    endpoint without structured output does.  Records each request's headers and body."""

    seen: list[tuple[dict[str, str], dict[str, Any]]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.seen.append((dict(self.headers), {}))
        self._send(200, {"object": "list", "data": [{"id": "org/M", "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((dict(self.headers), body))
        if "response_format" in body:
            self._send(400, {"error": {"message": "response_format is not supported"}})
            return
        self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant",
                                                              "content": "hi"}}]})


def test_attach_sends_the_served_name_key_and_headers_and_probes_capabilities(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("GW_KEY", "k1")
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "llm_backends.yaml"
    config.write_text(f"models:\n  gw:\n    backend: remote\n    base_url: {url}/v1/\n"
                      "    served_model: org/M\n    api_key_env: GW_KEY\n"
                      "    headers: {X-Team: qa}\n    timeout_s: 3\n"
                      f"  missing:\n    backend: remote\n    base_url: {url}\n")
    manager = LLMServerManager(config, home=tmp_path / "home")
    try:
        row = manager.start_server("gw")
        assert (row["status"], row["pid"], row["url"]) == ("RUNNING", None, url)
        probed = row["extra"]["capabilities"]
        # the endpoint refuses response_format and answers every chat with plain text
        assert probed["structured_output"] is False and probed["tools"] is False
        assert probed["chat"] is True and probed["reasons"]["structured_output"]
        assert all(h.get("Authorization") == "Bearer k1" and h.get("X-Team") == "qa"
                   for h, _ in _Endpoint.seen)
        assert {b["model"] for _, b in _Endpoint.seen if b} == {"org/M"}
        with pytest.raises(ServerError) as missing:
            manager.start_server("missing")
        assert "does not serve 'missing'; it lists: org/M" in str(missing.value)
    finally:
        server.shutdown()
        server.server_close()
    # The endpoint went away: still RUNNING (no pid to call crashed), but not healthy.
    [status] = manager.status("gw")
    assert (status["status"], status["healthy"], status["pid"]) == ("RUNNING", False, None)
    with pytest.raises(ServerError) as dead:  # a start re-attaches, and says why it cannot
        manager.start_server("gw")
    assert f"({url}/v1/models): cannot connect" in str(dead.value)
    assert manager.store.get_server("gw")["status"] == "FAILED"


# -- against a real endpoint OWLLM did not start ----------------------------------------

@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """OWLLM's transformers server as a stranger's endpoint: a plain subprocess with a key."""
    python = EnvRegistry(home=CACHE_HOME / "home").ensure_env(ENV_KEY).python_executable
    root = tmp_path_factory.mktemp("remote-endpoint")
    run_in_env(python, "demo_model", ["--out", str(root / "model"), "--seed", "0"],
               timeout=300)
    config = server_config(root / "model", SERVED, max_model_len=None)  # as OWLLM runs it
    (root / "config.json").write_text(json.dumps(config))
    port = free_port()
    with (root / "server.log").open("wb") as sink:
        process = subprocess.Popen(
            inenv_argv(python, "transformers_app", "--config-json", str(root / "config.json"),
                       "--host", "127.0.0.1", "--port", str(port)),
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "OWLLM_API_KEY": KEY})
    server = Server(process, f"http://127.0.0.1:{port}", SERVED, root / "server.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def blackhole() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def project(endpoint: Server, blackhole: int,
            tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("remote-project")
    (root / "configs").mkdir()
    (root / "configs" / "llm_backends.yaml").write_text(textwrap.dedent(f"""\
        models:
          ext:
            backend: remote
            base_url: {endpoint.base_url}/v1
            served_model: {SERVED}
            api_key_env: EXT_KEY
            headers: {{X-Owllm-Test: remote}}
            timeout_s: 60
            generation: {{max_tokens: 8}}
          ext_wrong_key:
            backend: remote
            base_url: {endpoint.base_url}
            served_model: {SERVED}
            api_key_env: WRONG_KEY
          ext_refused:
            backend: remote
            base_url: http://127.0.0.1:{free_port()}/v1
            timeout_s: 2
          ext_silent:
            backend: remote
            base_url: http://127.0.0.1:{blackhole}/v1
            timeout_s: 2
        """))
    return root


def owllm(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EXT_KEY": KEY, "WRONG_KEY": "not-the-key",
           "OWLLM_HOME": str(project / "home")}
    return subprocess.run([sys.executable, "-m", "owllm", "--config",
                           str(project / "configs" / "llm_backends.yaml"), *args],
                          capture_output=True, text=True, timeout=600, env=env, cwd=project)


@pytest.mark.slow
def test_attach_smoke_tools_smoke_and_detach(project: Path, endpoint: Server) -> None:
    start = owllm(project, "server", "start", "ext", "--json")
    assert start.returncode == 0, start.stdout + start.stderr
    row = json.loads(start.stdout)
    assert row["status"] == "RUNNING" and row["pid"] is None and row["healthy"] is True
    assert row["url"] == endpoint.base_url and row["extra"]["managed"] is False
    assert row["extra"]["served_model"] == SERVED
    assert row["extra"]["headers"] == ["X-Owllm-Test"]  # names only: a value may be a key
    probed = row["extra"]["capabilities"]
    assert probed["structured_output"] is True and probed["chat"] is True  # probed
    assert KEY not in start.stdout + start.stderr

    model = owllm(project, "model", "smoke", "ext", "--json")
    assert model.returncode == 0, model.stdout + model.stderr
    result = json.loads(model.stdout)
    assert (result["status"], result["health_ok"], result["generate_ok"]) == (
        "PASS", True, True), result
    assert result["reused_running_server"] is True

    tools = owllm(project, "tools", "smoke", "ext", "--json")
    assert tools.returncode == 0, tools.stdout + tools.stderr
    outcome = json.loads(tools.stdout)
    assert outcome["status"] == "PASS" and outcome["call"]["tool"] == "calculator", outcome

    status = json.loads(owllm(project, "server", "status", "ext", "--json").stdout)
    assert [(s["status"], s["healthy"]) for s in status] == [("RUNNING", True)]

    stop = owllm(project, "server", "stop", "ext", "--json")
    assert stop.returncode == 0, stop.stderr
    assert json.loads(stop.stdout)["status"] == "STOPPED"
    # Detached, never stopped: the endpoint's process is not OWLLM's.
    assert not gone(endpoint.process.pid)
    endpoint.wait_ready(timeout=5)


@pytest.mark.slow
def test_wrong_key_is_a_clear_401(project: Path) -> None:
    start = owllm(project, "server", "start", "ext_wrong_key")
    assert start.returncode == 1
    assert "HTTP 401: wrong or missing API key ($WRONG_KEY)" in start.stderr
    assert "/v1/models" in start.stderr and "Traceback" not in start.stderr
    assert "not-the-key" not in start.stderr
    status = json.loads(owllm(project, "server", "status", "ext_wrong_key", "--json").stdout)
    assert status[0]["status"] == "FAILED"


@pytest.mark.slow
@pytest.mark.parametrize("model_id", ["ext_refused", "ext_silent"])
def test_dead_url_is_a_clear_connection_error_within_timeout(project: Path,
                                                            model_id: str) -> None:
    started = time.monotonic()
    start = owllm(project, "server", "start", model_id)
    elapsed = time.monotonic() - started
    assert start.returncode == 1 and "Traceback" not in start.stderr
    assert "http://127.0.0.1:" in start.stderr and "/v1/models" in start.stderr
    expected = "cannot connect" if model_id == "ext_refused" else "no answer within timeout_s=2s"
    assert expected in start.stderr, start.stderr
    assert elapsed < 2 + 15  # timeout_s plus an interpreter's start, never a hang


@pytest.mark.slow
def test_builtin_suites_run_against_the_endpoint(project: Path, endpoint: Server) -> None:
    env = {**os.environ, "EXT_KEY": KEY, "OWLLM_HOME": str(project / "home"),
           # The checkout's root conftest.py would load as an out-of-tree conftest of the
           # suites folder (as in tests/test_plugin.py).
           "PYTEST_ADDOPTS": "--noconftest -p no:cacheprovider"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "--owllm-model", "ext",
                          "-rs", "--junitxml", str(project / "junit.xml")],
                         capture_output=True, text=True, timeout=600, env=env, cwd=project)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    for test in ("test_generate[ext]", "test_tool_round_trip[ext]",
                 "test_constrained_output_is_always_a_valid_call[ext]",
                 "test_greedy_answers_are_reproducible[ext]"):
        assert test in (project / "junit.xml").read_text()
    assert " failed" not in run.stdout
    assert "the selected models are remote endpoints: no env of OWLLM's" in run.stdout  # -rs
    assert not gone(endpoint.process.pid)  # the run's end detached, nothing was killed

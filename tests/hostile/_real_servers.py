"""Real servers for the server-side hostile-input tests (cross-site, request limits, slow
clients, saturation, API key): every one is a real process on 127.0.0.1, reached over real
HTTP (httpx, or a raw socket where httpx would refuse to send the hostile bytes).

* Model servers are started by the manager from a config of their own (the demo model on
  each backend, ``api_key_env`` naming :data:`KEY_VAR`) in the run's home, so the envs, the
  demo weights and the GGUF are the run's, and the launch (argv, environment, the key passed
  as ``OWLLM_API_KEY`` / ``VLLM_API_KEY``) is the one users get.  ``OWLLM_ALLOWED_HOSTS`` is
  :data:`ALLOWED`.  One server per backend serves every test file and every xdist worker
  (:func:`model_server`): started once per run through the plugin's ``start_shared`` (the
  first worker under a lock, the others attach), owned by the run and stopped when it ends.
  Those tests only send requests; none stops or kills the shared server.
* The tool server is ``python -m owllm.tools.server`` (:func:`start_tool_server`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
KEY_VAR = "OWLLM_HOSTILE_TEST_KEY"  # the config's api_key_env
KEY = "sk-hostile-5d1f0c7e9a3b"
ALLOWED = "allowed.example"
EVIL = "evil.example"
SERVER_KEY_VARS = ("OWLLM_API_KEY", "VLLM_API_KEY", "OWLLM_ALLOWED_HOSTS")
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
# Demo model per backend (vLLM and llama.cpp readiness is a real completion).  The shared
# servers' ids are ``hostile-<backend>``; a test's own server carries the worker in its id.
MODELS: dict[str, dict[str, Any]] = {
    "transformers": {"max_model_len": 512},
    "llamacpp": {"max_model_len": 512},
    "vllm": {"max_model_len": 512, "startup_timeout_s": 600},
}
_STARTED: dict[str, Endpoint] = {}


@dataclass
class Endpoint:
    """A running server: where it listens, its pid, its log, the key it wants (if any)."""

    url: str
    pid: int
    log: Path
    key: str | None = None
    model: str | None = None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def request(self, method: str, path: str, *, host: str | None = None,
                origin: str | None = None, auth: bool = True,
                headers: Mapping[str, str] | None = None, timeout: float = 60.0,
                **kwargs: Any) -> httpx.Response:
        """One request; ``auth`` sends the key, ``host``/``origin`` set those headers."""
        sent = dict(headers or {})
        if auth and self.key:
            sent.setdefault("Authorization", f"Bearer {self.key}")
        if host is not None:
            sent["Host"] = host
        if origin is not None:
            sent["Origin"] = origin
        with httpx.Client(trust_env=False, timeout=timeout) as client:
            return client.request(method, self.url + path, headers=sent, **kwargs)


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """The OpenAI-shaped error of a model server's response (asserted), without any trace of
    an exception text, traceback or file path."""
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert_no_internals(response.text)
    return dict(error)


def tool_error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """The tool server's own error shape ``{"error": {"code", "message", "path"}}``."""
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert {"code", "message", "path"} <= set(error), error
    assert_no_internals(response.text)
    return dict(error)


def assert_no_internals(text: str) -> None:
    for marker in ("Traceback", 'File "', "site-packages", str(REPO), "/.owllm/",
                   ".gguf", "Error:", "object has no attribute"):
        assert marker not in text, f"{marker!r} leaked into a response: {text[:500]}"


def raw_exchange(port: int, data: bytes, *, timeout: float = 10.0,
                 then_close: bool = False) -> tuple[int, bytes, float]:
    """Send raw bytes, read the answer until the server closes or a whole JSON body came;
    (status, body, seconds).  For requests httpx would not send (lying Content-Length)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        if then_close:
            sock.shutdown(socket.SHUT_WR)
        reply = b""
        with contextlib.suppress(OSError):
            while True:
                head, sep, body = reply.partition(b"\r\n\r\n")
                if sep and b"content-length:" in head.lower():
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    if len(body) >= length:
                        break
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/") else 0
    return status, body, time.monotonic() - started


# -- model servers ----------------------------------------------------------------------------

@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def hostile_servers() -> Iterator[dict[str, Endpoint]]:
    """The endpoints :func:`model_server` handed out in this worker, forgotten when its
    session ends; the servers themselves belong to the run, which stops them when it ends
    (before the root conftest looks for leftover processes).  Import it into a test module
    that uses model_server."""
    yield _STARTED
    _STARTED.clear()


def model_server(request: pytest.FixtureRequest, backend: str) -> Endpoint:
    """The keyed demo server of ``backend``, started once per run and shared by the xdist
    workers (issue #18: one vLLM start per worker cost a minute of a 2-core run)."""
    request.getfixturevalue("hostile_servers")
    if backend not in _STARTED:
        _STARTED[backend] = _shared_model_server(request, backend)
    return _STARTED[backend]


def _shared_model_server(request: pytest.FixtureRequest, backend: str) -> Endpoint:
    from owllm.servers.manager import LLMServerManager
    from pytest_owllm.factories import start_shared
    from pytest_owllm.run import run_owner, shared_dir

    run_manager = request.getfixturevalue("owllm_manager")
    config = shared_dir(request.config) / "hostile-servers" / "configs" / "llm_backends.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    models = {f"hostile-{name}": model_entry(name, KEY) for name in MODELS}
    # Every worker writes the same text; os.replace makes each write whole.
    tmp = config.with_name(f".{WORKER}.tmp")
    tmp.write_text(json.dumps({"models": models}), encoding="utf-8")  # JSON is YAML
    os.replace(tmp, config)
    manager = LLMServerManager(config, home=run_manager.home)
    manager.owner = run_owner(request.config)  # the run stops it when it ends
    model_id = f"hostile-{backend}"
    with _environ({KEY_VAR: KEY, "OWLLM_ALLOWED_HOSTS": ALLOWED}):
        row = start_shared(request, manager, model_id)
    return Endpoint(row["url"], row["pid"], Path(row["log_path"]), KEY, model_id)


def model_entry(backend: str, key: str | None) -> dict[str, Any]:
    """The config entry of the demo model on ``backend`` (keyed when ``key`` is given)."""
    model: dict[str, Any] = {"base_model": "demo://tiny-llama", "backend": backend,
                             "device": "cpu", "generation": {"max_tokens": 8,
                                                             "temperature": 0.0},
                             **MODELS[backend]}
    if key:
        model["api_key_env"] = KEY_VAR
    return model


def start_model_server(request: pytest.FixtureRequest, backend: str, name: str,
                       key: str | None = KEY) -> tuple[Endpoint, Callable[[], object]]:
    """Start a demo server of ``backend`` through the manager, in the run's home (its envs,
    demo weights and GGUF); returns it and the function that stops it."""
    from owllm.servers.manager import LLMServerManager

    run_manager = request.getfixturevalue("owllm_manager")
    folder = request.getfixturevalue("tmp_path_factory").mktemp(f"hostile-{name}")
    model_id = f"hostile-{name}-{WORKER}"
    config = folder / "configs" / "llm_backends.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"models": {model_id: model_entry(backend, key)}}),  # YAML
                      encoding="utf-8")
    manager = LLMServerManager(config, home=run_manager.home)

    def stop() -> object:
        return manager.stop_server(model_id)

    with _environ({KEY_VAR: key or "", "OWLLM_ALLOWED_HOSTS": ALLOWED}):
        try:
            row = manager.start_server(model_id)
        except BaseException:
            stop()
            raise
    return Endpoint(row["url"], row["pid"], Path(row["log_path"]), key, model_id), stop


# -- the tool server --------------------------------------------------------------------------

@dataclass
class ToolProcess:
    """A ``python -m owllm.tools.server`` process."""

    proc: subprocess.Popen[bytes]
    endpoint: Endpoint

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


def start_tool_server(folder: Path, *args: str, env: Mapping[str, str] | None = None,
                      key: str | None = None) -> ToolProcess:
    """Start the tool server (the test tools of tests/tools included) and wait for it."""
    from tests.tools.conftest import tools_config

    folder.mkdir(parents=True, exist_ok=True)
    ready, log = folder / "ready.json", folder / "server.log"
    child_env = {k: v for k, v in os.environ.items() if k not in SERVER_KEY_VARS}
    child_env.update(env or {})
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "owllm.tools.server", "--host", "127.0.0.1", "--port", "0",
             "--ready-file", str(ready), "--no-entry-points", "--tools-config",
             str(tools_config(folder)), *args],
            stdout=out, stderr=subprocess.STDOUT, env=child_env, cwd=folder)
    deadline = time.monotonic() + 20
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
            raise RuntimeError(f"tool server did not start:\n{log.read_text()}")
        time.sleep(0.02)
    info = json.loads(ready.read_text())
    return ToolProcess(proc, Endpoint(info["url"], info["pid"], log, key))

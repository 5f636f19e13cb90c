"""``backend: remote`` over HTTPS: verification on by default, ``ca_bundle`` for a private CA,
``tls_verify: false`` to opt out; the smokes verify the same way the attach did.

The endpoint is a real HTTPS server on loopback (the standard library's, wrapped in TLS)
with a certificate signed by a CA made for this module (``trustme``); it answers like an
OpenAI endpoint without structured output.
"""

from __future__ import annotations

import json
import ssl
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme

from owllm import httpclient
from owllm.config import load_config
from owllm.errors import ConfigError, ServerError
from owllm.servers.manager import LLMServerManager
from owllm.smoke import model_smoke


class _Endpoint(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: dict[str, Any], stream: bool = False) -> None:
        if stream:  # the smoke streams its generation
            chunk = {"choices": [{"index": 0, "delta": {"content": "hi"},
                                  "finish_reason": None}]}
            data = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
            content_type = "text/event-stream"
        else:
            data, content_type = json.dumps(body).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if "response_format" in body:
            self._send(400, {"error": {"message": "response_format is not supported"}})
            return
        self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant",
                                                              "content": "hi"},
                                      "text": "hi"}],
                         "usage": {"completion_tokens": 1}}, stream=bool(body.get("stream")))


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    root = tmp_path_factory.mktemp("tls")
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    try:
        yield {"url": f"https://127.0.0.1:{server.server_address[1]}", "ca": root / "ca.pem"}
    finally:
        server.shutdown()
        server.server_close()


def _project(tmp_path: Path, url: str) -> Path:
    (tmp_path / "configs").mkdir()
    (tmp_path / "certs").mkdir()
    config = tmp_path / "configs" / "llm_backends.yaml"
    config.write_text(textwrap.dedent(f"""\
        models:
          strict: {{backend: remote, base_url: "{url}/v1", served_model: m, timeout_s: 5}}
          private_ca: {{backend: remote, base_url: "{url}/v1", served_model: m,
                        ca_bundle: certs/ca.pem, timeout_s: 5}}
          unverified: {{backend: remote, base_url: "{url}", served_model: m,
                        tls_verify: false, timeout_s: 5}}
        """))
    return config


def test_verification_is_on_by_default_and_names_the_url(https: dict[str, Any],
                                                          tmp_path: Path) -> None:
    config = _project(tmp_path, https["url"])
    (tmp_path / "certs" / "ca.pem").write_bytes(https["ca"].read_bytes())
    manager = LLMServerManager(config, home=tmp_path / "home")
    with pytest.raises(ServerError) as info:
        manager.start_server("strict")
    message = str(info.value)
    assert f"({https['url']}/v1/models): TLS certificate not trusted" in message, message
    assert "ca_bundle" in (info.value.hint or "")
    assert manager.store.get_server("strict")["status"] == "FAILED"


def test_a_private_ca_is_trusted_by_the_attach_and_by_the_smokes(https: dict[str, Any],
                                                                  tmp_path: Path) -> None:
    config = _project(tmp_path, https["url"])
    (tmp_path / "certs" / "ca.pem").write_bytes(https["ca"].read_bytes())
    assert load_config(config).models["private_ca"].ca_bundle == str(
        tmp_path / "certs" / "ca.pem")  # relative to the config's home
    manager = LLMServerManager(config, home=tmp_path / "home")
    row = manager.start_server("private_ca")
    assert row["status"] == "RUNNING" and row["extra"]["ca_bundle"].endswith("ca.pem")
    smoke = model_smoke(manager, "private_ca")
    assert smoke["status"] == "PASS", smoke
    # and a fresh process state (no settings registered yet) gets them from the row
    httpclient._TLS.clear()
    assert manager.reconcile("private_ca")["healthy"] is True


def test_tls_verify_false_skips_verification(https: dict[str, Any], tmp_path: Path) -> None:
    config = _project(tmp_path, https["url"])
    (tmp_path / "certs" / "ca.pem").write_bytes(https["ca"].read_bytes())
    manager = LLMServerManager(config, home=tmp_path / "home")
    row = manager.start_server("unverified")
    assert row["status"] == "RUNNING" and row["extra"]["tls_verify"] is False
    assert model_smoke(manager, "unverified")["status"] == "PASS"


@pytest.mark.parametrize(("entry", "expected"), [
    ("{backend: remote, base_url: 'http://h/v1', tls_verify: false}",
     "models.m.tls_verify: tls_verify configures TLS, and base_url is not https://"),
    ("{backend: remote, base_url: 'https://h/v1', tls_verify: false, ca_bundle: ca.pem}",
     "models.m.tls_verify: tls_verify: false turns verification off"),
    ("{backend: remote, base_url: 'https://h/v1', ca_bundle: missing.pem}",
     "models.m.ca_bundle:"),
    ("{base_model: x, ca_bundle: ca.pem}",
     "models.m.ca_bundle: ca_bundle configures an endpoint's TLS and applies to backend: "
     "remote only, not transformers"),
])
def test_tls_options_are_validated(tmp_path: Path, entry: str, expected: str) -> None:
    (tmp_path / "ca.pem").write_text("not checked here")
    path = tmp_path / "cfg.yaml"
    path.write_text(f"models:\n  m: {entry}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any(f"cfg.yaml:2: {expected}" in p for p in info.value.problems), \
        info.value.problems

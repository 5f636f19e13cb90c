"""API keys, OWLLM's side: a model's ``api_key_env`` names the variable that holds its key;
every OWLLM probe and client sends it, the server gets it in its environment, and the key
itself is never written to the StateStore, a log or JSON output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from owllm import httpclient
from owllm.errors import UsageError
from owllm.smoke import model_smoke
from tests.servers.conftest import make_config, make_manager

KEY = "sk-owllm-test-7f3a9c1e5b"
CONFIG = """
models:
  keyed: {base_model: stub, api_key_env: STUB_API_KEY}
  open: {base_model: stub}
"""


@pytest.fixture
def manager(tmp_path: Path, tmp_home: Path, stub_backend: Any) -> Any:
    stub_backend.ready_needs_completion = True  # readiness itself needs the key
    config = make_config(tmp_path)
    config.write_text(CONFIG)
    mgr = make_manager(config)
    yield mgr
    mgr.stop_all()


def _launch_with_key_vars(stub_backend: Any) -> None:
    """The stub backend passes the key the way the real backends do (api_key_vars)."""
    from owllm.backends._common import api_key_vars

    original = stub_backend.launch

    def launch(model: Any, *args: Any) -> Any:
        spec = original(model, *args)
        return type(spec)(argv=spec.argv, env={**spec.env, **api_key_vars(model)},
                          ready_needs_completion=spec.ready_needs_completion)

    stub_backend.launch = launch


def test_key_is_sent_and_never_stored(manager: Any, stub_backend: Any, tmp_home: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUB_API_KEY", KEY)
    _launch_with_key_vars(stub_backend)
    result = model_smoke(manager, "keyed", keep=True)
    row = manager.store.get_server("keyed")
    assert row["status"] == "RUNNING" and row["extra"]["api_key_env"] == "STUB_API_KEY"
    # Without the key the server refuses; with it (as OWLLM sends it) it answers.
    assert httpclient.post(row["url"] + "/v1/completions", json={}).status_code == 401
    assert httpclient.post(row["url"] + "/v1/completions", json={},
                           headers=httpclient.row_headers(row)).status_code == 200
    assert result["generate_ok"] or result["errors"]  # smoke ran against the keyed server
    for path in tmp_home.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), f"the key leaked into {path}"
    assert KEY not in repr(result)


def test_missing_key_variable_is_a_clear_usage_error(manager: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STUB_API_KEY", raising=False)
    with pytest.raises(UsageError, match=r"api_key_env names \$STUB_API_KEY, which is not set"):
        httpclient.bearer("STUB_API_KEY", what="model 'keyed'")


def test_a_key_in_the_callers_shell_does_not_lock_other_servers(
        manager: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """OWLLM_API_KEY exported for some other purpose must not make a model without
    api_key_env demand a key that no OWLLM client sends."""
    monkeypatch.setenv("OWLLM_API_KEY", "something-else")
    row = manager.start_server("open")
    assert row["status"] == "RUNNING"
    assert httpclient.post(row["url"] + "/v1/completions", json={}).status_code == 200

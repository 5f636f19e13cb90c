"""A server whose child dies of a signal: the error names the process, the signal and the
first error in the log, not the shutdown chatter at its end (real processes, a real SIGILL)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from owllm._cpu_probe import host_id
from owllm.backends import Capabilities, LaunchSpec
from owllm.backends._kernels import KernelChoice, choose
from owllm.errors import ServerDied
from owllm.servers.diagnose import diagnose, signal_name
from owllm.servers.manager import LLMServerManager
from owllm.smoke import model_smoke
from tests.procs import gone
from tests.servers.conftest import STUB, make_config, make_manager

CONFIG = """
models:
  faults: {base_model: stub, server_args: ["--mode", "child-sigill"]}
  fast-kernel: {base_model: stub, server_args: ["--mode", "sigill-unless-safe"]}
"""


@pytest.fixture
def faulty(tmp_path: Path, tmp_home: Path, stub_backend: Any) -> Any:
    config = make_config(tmp_path)
    config.write_text(CONFIG)
    mgr = make_manager(config)
    yield mgr
    mgr.stop_all()


def test_child_killed_by_sigill_is_named_with_the_first_error(faulty: LLMServerManager) -> None:
    with pytest.raises(ServerDied) as info:
        faulty.start_server("faults")
    error = info.value
    assert error.signal == "SIGILL"
    assert error.process is not None and "stub_server.py worker" in error.process
    assert error.returncode == 0  # the server itself exited "cleanly", as vLLM's does
    text = str(error)
    assert "died of SIGILL" in text and "does not allow" in text
    assert "Fatal Python error: Illegal instruction" in text  # the worker's own report
    assert "worker: loading kernels" in text  # the lines before the first error
    assert "shutdown chatter 39" not in text  # not the tail
    row = faulty.store.get_server("faults")
    assert row["status"] == "FAILED" and "SIGILL" in row["last_error"]


def test_smoke_json_carries_the_signal_and_process(faulty: LLMServerManager) -> None:
    result = model_smoke(faulty, "faults")
    assert result["status"] == "FAIL"
    error = result["errors"][0]
    assert error["stage"] == "start" and error["signal"] == "SIGILL"
    assert "worker" in error["process"] and error["log_path"].endswith("faults.log")


def test_server_killed_by_a_signal_itself(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("old run: ERROR from yesterday\n=== starting\nloading\n")
    offset = len("old run: ERROR from yesterday\n")
    found = diagnose(log, offset, -9, None)
    assert found.signal == "SIGKILL" and found.process == "the server process"
    assert "yesterday" not in found.excerpt  # only this start's lines
    assert "out-of-memory" in found.summary(-9)
    assert signal_name(-11) == "SIGSEGV"


class KernelStub:
    """A backend with a host-dependent fast kernel: 'fast' dies of SIGILL, 'safe' serves."""

    name = "transformers"
    capabilities = Capabilities()

    def model_path(self, model: Any, ctx: Any) -> str:
        return model.base_model

    def launch(self, model: Any, model_path: Any, ctx: Any, host: str, port: int) -> LaunchSpec:
        choice = choose(ctx, "dtype", fast="fast", safe="safe", needs=("amx_tile",),
                        fast_reason="probed ok")
        return LaunchSpec(argv=(sys.executable, str(STUB), "--host", host, "--port", str(port),
                                "--kernel", choice.value, *model.server_args),
                          kernels=(choice,))


def test_cpu_fault_falls_back_once_and_remembers(tmp_path: Path, tmp_home: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("owllm.servers.manager.get_backend", lambda name: KernelStub())
    config = make_config(tmp_path)
    config.write_text(CONFIG)
    mgr = make_manager(config)
    mgr.store.upsert_env("system-python", status="READY")
    try:
        row = mgr.start_server("fast-kernel")
        dtype = row["extra"]["kernels"]["dtype"]
        assert row["status"] == "RUNNING" and dtype["value"] == "safe"
        assert "SIGILL" in dtype["reason"] and "crashed on this host" in dtype["reason"]
        decision = mgr.store.env_decision("system-python", "dtype")
        assert decision is not None and decision["value"] == "safe"
        assert decision["host"] == host_id()
        mgr.stop_server("fast-kernel")
        assert gone(row["pid"])
        # The next start goes straight to the safe kernel: no new fault in the log.
        log = Path(row["log_path"])
        before = log.read_text().count("Fatal Python error")
        again = mgr.start_server("fast-kernel")
        assert again["extra"]["kernels"]["dtype"]["value"] == "safe"
        assert log.read_text().count("Fatal Python error") == before
    finally:
        mgr.stop_all()


def test_explicit_choice_is_not_retried(faulty: LLMServerManager, tmp_home: Path) -> None:
    """Only a choice with a fallback is retried; a plain crash is reported at once."""
    spec = LaunchSpec(argv=("x",), kernels=(KernelChoice("dtype", "bfloat16", "config"),))
    from owllm.servers.manager import _fallback_for

    error = ServerDied("died", signal="SIGILL")
    assert _fallback_for(spec, error) is None

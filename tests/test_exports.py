"""The public API is what owllm/__init__.py exports (DESIGN: pin it, as httpx does)."""

from __future__ import annotations

import owllm

EXPECTED = {
    "Config", "ConfigError", "EnvError", "EnvRegistry", "EnvSpec", "Home", "LLMServerManager",
    "ModelConfig", "OwllmError", "ServerError", "ServerStartTimeout", "StateStore",
    "StateStoreError", "UsageError", "__version__", "get_llm_server_manager",
    "get_state_store", "load_config", "resolve_home",
}


def test_exported_members() -> None:
    assert set(owllm.__all__) == EXPECTED
    for name in owllm.__all__:
        assert hasattr(owllm, name), name


def test_every_error_is_an_owllm_error_with_an_exit_code() -> None:
    for name in ("ConfigError", "EnvError", "ServerError", "ServerStartTimeout",
                 "StateStoreError", "UsageError"):
        cls = getattr(owllm, name)
        assert issubclass(cls, owllm.OwllmError)
        assert cls.exit_code in (1, 2)
    assert owllm.UsageError.exit_code == owllm.ConfigError.exit_code == 2


def test_orchestrator_does_not_import_the_ml_stack() -> None:
    import subprocess
    import sys

    code = ("import sys, owllm, owllm.cli, owllm.smoke, pytest_owllm.plugin; "
            "print(sorted(m for m in ('torch', 'transformers', 'vllm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"

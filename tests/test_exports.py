"""The public API is what owllm/__init__.py exports (DESIGN: pin it, as httpx does in
tests/test_exported_members.py): ``__all__`` is exactly the sorted public names of the
package's namespace, so nothing is exported by accident or forgotten in ``__all__``."""

from __future__ import annotations
import __future__

import types

import owllm

# Dunder names that are public on purpose.
PUBLIC_DUNDERS = {"__version__"}
# The guide's names (README, DESIGN convention 2): they must stay whatever else changes.
GUIDE_NAMES = {"get_state_store", "get_llm_server_manager", "EnvRegistry", "StateStore",
               "LLMServerManager"}


# The modules that are API themselves (the guide imports ``core.state_store`` and friends;
# users' suites use ``owllm.httpclient``): every other module is ``_private``.
PUBLIC_MODULES = {"backends", "capabilities", "checks", "cli", "conformance", "config", "envs",
                  "errors",
                  "hardware", "httpclient", "inenv", "paths", "quality", "schemas", "servers",
                  "smoke", "state_store", "tools"}


def _is_public(name: str, value: object) -> bool:
    # ``annotations`` is the ``from __future__`` feature every module imports.
    if isinstance(value, __future__._Feature):
        return False
    return not name.startswith("_") or name in PUBLIC_DUNDERS


def test_all_is_the_sorted_public_names_of_the_namespace() -> None:
    public = sorted(name for name, value in vars(owllm).items()
                    if _is_public(name, value) and not isinstance(value, types.ModuleType))
    assert owllm.__all__ == public


def test_internal_modules_are_private() -> None:
    """A module in owllm's namespace (imported by anything) is public API or ``_private``:
    nobody imports ``owllm.some_helper`` by accident and pins us to it."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(owllm.__path__):
        if info.name != "__main__":  # running it is the CLI
            importlib.import_module(f"owllm.{info.name}")
    modules = {name for name, value in vars(owllm).items()
               if isinstance(value, types.ModuleType) and not name.startswith("_")}
    assert modules <= PUBLIC_MODULES, sorted(modules - PUBLIC_MODULES)


def test_the_guides_names_are_exported() -> None:
    assert set(owllm.__all__) >= GUIDE_NAMES
    assert hasattr(owllm.StateStore, "upsert_model")
    assert hasattr(owllm.LLMServerManager, "start_server")
    assert hasattr(owllm.EnvRegistry, "get_env_for_model")


def test_every_error_is_an_owllm_error_with_an_exit_code() -> None:
    errors = [getattr(owllm, name) for name in owllm.__all__ if name.endswith("Error")
              or name in ("ServerStartTimeout", "ServerDied", "PortInUse")]
    assert len(errors) == 10
    for cls in errors:
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

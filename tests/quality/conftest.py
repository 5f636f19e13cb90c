"""The in-env fixtures (a real transformers env, the demo model, servers on loopback) shared
with tests/inenv, plus the trained tool caller, built once per machine through the same path
``demo://tiny-tool-caller`` takes in a config (``materialize_demo``), cached by content hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from owllm.backends._common import materialize_demo
from owllm.paths import Home
from tests.inenv.conftest import (  # noqa: F401  (fixtures, used by name)
    CACHE_HOME,
    built_models,
    demo_model_dir,
    env_python,
    server_factory,
    transformers_env,
    transformers_python,
)


@pytest.fixture(scope="session")
def tool_caller_dir(env_python: Path) -> Path:  # noqa: F811
    """The trained model, built once per machine under the builder's file lock (about 2.5
    CPU-minutes on one torch thread the first time, then a marker check)."""
    return materialize_demo("tiny-tool-caller", Home(CACHE_HOME / "home"), env_python)

"""The in-env fixtures (a real transformers env, the demo model, servers on loopback) shared
with tests/inenv, plus the trained tool caller, built once per machine through the same path
``demo://tiny-tool-caller`` takes in a config (``materialize_demo``), cached by content hash."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from owllm.backends._common import demo_folder, materialize_demo
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
    """The trained model (minutes on the first run on a machine, then a marker check).

    Training takes ~100 CPU-seconds on one idle core but 6 minutes of wall time on a busy
    2-core host, and the model does not yet copy arguments (issue 17, docs/decisions.md):
    until it passes an exact gate, its build is not worth CI's time.  The build runs when
    the model is cached on this machine already or ``OWLLM_TRAIN_TESTS=1`` asks for it, and
    the tests that need it skip (saying so) otherwise."""
    home = Home(CACHE_HOME / "home")
    cached = (home.cache_dir / "models" / demo_folder("tiny-tool-caller", 0)
              / ".owllm-demo.json").is_file()
    if not cached and os.environ.get("OWLLM_TRAIN_TESTS") != "1":
        pytest.skip("demo://tiny-tool-caller is not built on this machine and training it "
                    "takes minutes: set OWLLM_TRAIN_TESTS=1 to build it")
    return materialize_demo("tiny-tool-caller", home, env_python)

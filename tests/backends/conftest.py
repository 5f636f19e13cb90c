"""Fixtures shared with tests/inenv (the transformers env, cached per machine)."""

from tests.inenv.conftest import (  # noqa: F401  (fixtures, found by name)
    env_python,
    transformers_env,
    transformers_python,
)

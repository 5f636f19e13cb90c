"""Fixtures the CLI tests share with the library's own tests."""

from __future__ import annotations

from tests.envs.conftest import tiny_envs

__all__ = ["tiny_envs"]  # a fixture: pytest finds it here, for tests/cli/test_env.py

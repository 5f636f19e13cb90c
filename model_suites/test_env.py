"""One health check per distinct env_key of the selected models (not one per model)."""

from __future__ import annotations

from typing import Any

import pytest

from owllm.envs import EnvRegistry
from owllm.smoke import env_test

pytestmark = [pytest.mark.owllm_env, pytest.mark.slow]


def test_env_health(owllm_env_key: str, owllm_registry: EnvRegistry,
                    record_property: Any) -> None:
    result = env_test(owllm_registry, owllm_env_key)
    for name in ("env_key", "python_path", "torch_version", "cuda_available"):
        record_property(name, result.get(name))
    assert result["status"] == "PASS", f"env {owllm_env_key} failed its probe: {result['errors']}"

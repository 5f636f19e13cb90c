"""pytest wiring for OWLLM (options, markers, collection, fixtures).

Only hooks live here; the logic is in ``owllm``.
"""

from __future__ import annotations

import pytest

MARKERS = {
    "gpu": "needs a CUDA GPU; skipped with a reason elsewhere (deselect with -m 'not gpu')",
    "slow": "takes more than a few seconds (real envs, real servers)",
    "owllm_env": "an OWLLM environment health check",
    "owllm_model": "an OWLLM model server check",
    "owllm_tools": "an OWLLM tool-calling check",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, help_text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {help_text}")

"""A model smoke per model: the server starts (once per run), answers /health, generates."""

from __future__ import annotations

import json
from typing import Any

import pytest

from owllm.servers.manager import LLMServerManager
from owllm.smoke import model_smoke

pytestmark = [pytest.mark.owllm_model, pytest.mark.slow]


def test_generate(owllm_model_id: str, owllm_server: dict[str, Any],
                  owllm_manager: LLMServerManager, record_property: Any) -> None:
    result = model_smoke(owllm_manager, owllm_model_id, keep=True)
    extra = owllm_server.get("extra") or {}
    record_property("env_key", owllm_server.get("env_key"))
    record_property("port", owllm_server.get("port"))
    record_property("startup_s", extra.get("startup_s"))
    record_property("tokens_per_s", result.get("tokens_per_s"))
    record_property("first_token_s", result.get("first_token_s"))
    for step in result.get("ladder") or []:  # the readiness ladder: which step, how long
        record_property(f"ladder_{step['step']}_ok", step["ok"])
        record_property(f"ladder_{step['step']}_s", step["seconds"])
    assert result["status"] == "PASS", (
        f"model smoke of {owllm_model_id} failed: {json.dumps(result['errors'], indent=2)}\n"
        f"server log tail:\n{result.get('log_tail', '')}")

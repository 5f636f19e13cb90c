"""A tools smoke per model: the model emits a call (constrained where the backend can),
the call is validated strictly, executed on the tool server, and the result goes back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from owllm.servers.manager import LLMServerManager
from owllm.smoke import tools_smoke

pytestmark = [pytest.mark.owllm_tools, pytest.mark.slow]


def test_tool_round_trip(owllm_model_id: str, owllm_server: dict[str, Any],
                         owllm_tool_server: dict[str, Any], owllm_manager: LLMServerManager,
                         record_property: Any) -> None:
    result = tools_smoke(owllm_manager, owllm_model_id, keep=True,
                         tool_server_url=owllm_tool_server["url"])
    record_property("tool_call", json.dumps(result.get("call")))
    record_property("constrained", result.get("constrained"))
    assert result["status"] == "PASS", (
        f"tools smoke of {owllm_model_id} failed: {json.dumps(result, indent=2, default=str)}")

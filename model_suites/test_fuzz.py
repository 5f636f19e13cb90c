"""Tool-schema fuzzing per model: for generated tool schemas, the model's constrained output
must always be a valid call of one of them (Hypothesis draws the schemas)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from owllm import httpclient
from owllm.backends import get_backend
from owllm.config import Config
from owllm.tools import parse_tool_call
from owllm.tools.prompts import tool_call_response_schema
from pytest_owllm.strategies import SCALAR_SCHEMAS, tool_specs

pytestmark = [pytest.mark.owllm_tools, pytest.mark.slow]

def test_constrained_output_is_always_a_valid_call(owllm_model_id: str,
                                                   owllm_server: dict[str, Any],
                                                   owllm_config: Config) -> None:
    backend = owllm_config.models[owllm_model_id].backend
    capabilities = get_backend(backend).capabilities
    if not capabilities.structured_output:
        pytest.skip(f"backend {backend} has no structured output")
    probed = (owllm_server.get("extra") or {}).get("capabilities") or {}
    if probed.get("structured_output") is False:  # an attached endpoint showed it lacks it
        pytest.skip(f"the endpoint of {owllm_model_id} does not accept a json_schema "
                    "response format (probed when it was attached)")
    # Only what the backend's decoder enforces (its capabilities list the gaps).
    scalars = st.sampled_from([s for s in SCALAR_SCHEMAS if capabilities.enforces(s)])

    @settings(max_examples=5, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(specs=tool_specs(scalars), seed=st.integers(0, 2**16))
    def check(specs: list[dict[str, Any]], seed: int) -> None:
        schema = tool_call_response_schema(specs)
        response = httpclient.post(
            owllm_server["url"] + "/v1/chat/completions", timeout=120,
            headers=httpclient.row_headers(owllm_server), json={
            "model": httpclient.served_model(owllm_server), "max_tokens": 160,
            "temperature": 1.0, "seed": seed,
            "messages": [{"role": "user", "content": "Call one of the tools."}],
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "call", "schema": schema, "strict": True}}})
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        assert choice["finish_reason"] == "stop", f"output did not complete: {choice}"
        parse_tool_call(choice["message"]["content"], tools=specs)  # raises if invalid

    check()

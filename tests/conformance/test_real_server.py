"""The conformance checks against OWLLM's own transformers server (the demo model, a real
process on loopback, through the fixtures of tests/inenv): the expected verdicts are the
spec's — every check passes, or is *unsupported* where the check's parameter may be refused
with a 400 naming it.

``ON_MAIN`` lists what the server gets wrong today (issue #15, item 2: the "oai" work fixes
it); those items are strict xfails, so the fix turns them into failures here until the
entry is removed."""

from __future__ import annotations

from typing import Any

import pytest

from owllm import conformance
from owllm.conformance import BY_NAME, CHECKS, Outcome, Target
from tests.inenv.conftest import (  # noqa: F401  (the fixtures the demo server needs)
    built_models,
    demo_model_dir,
    env_python,
    instruct_server,
    server_factory,
    transformers_env,
    transformers_python,
)

pytestmark = pytest.mark.slow

ON_MAIN = {
    "errors.wrong_shape_400": "wrong shapes answer 422 (OpenAI: 400)",
    "errors.max_tokens_zero_400": "max_tokens 0 / -1 answer 422 (OpenAI: 400)",
    "logprobs.chat": "logprobs silently ignored (null)",
    "logprobs.completions": "logprobs silently ignored (null)",
    "sampling.tiny_top_p_no_500": "top_p 1e-300 crashes the sampler: the connection drops",
}


@pytest.fixture(scope="module")
def outcomes(instruct_server: Any) -> dict[str, Outcome]:  # noqa: F811
    """Every check once against the server (a few seconds on the tiny model)."""
    target = Target(instruct_server.base_url, instruct_server.model_id)
    try:
        return {check.name: outcome for check, outcome in conformance.run_all(target)}
    finally:
        target.close()


@pytest.mark.parametrize("check", [
    pytest.param(c.name, marks=pytest.mark.xfail(strict=True, reason=ON_MAIN[c.name])
                 if c.name in ON_MAIN else ()) for c in CHECKS])
def test_the_transformers_server_conforms(check: str, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[check]
    allowed = {conformance.PASSED} | ({conformance.UNSUPPORTED} if BY_NAME[check].refusable
                                      else set())
    assert outcome.status in allowed, outcome

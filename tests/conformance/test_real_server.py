"""The conformance checks against OWLLM's own transformers server (the demo model, a real
process on loopback, through the fixtures of tests/inenv): the expected verdicts are the
spec's — every check passes, or is *unsupported* where the check's parameter may be refused
with a 400 naming it."""

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

@pytest.fixture(scope="module")
def outcomes(instruct_server: Any) -> dict[str, Outcome]:  # noqa: F811
    """Every check once against the server (a few seconds on the tiny model)."""
    target = Target(instruct_server.base_url, instruct_server.model_id)
    try:
        return {check.name: outcome for check, outcome in conformance.run_all(target)}
    finally:
        target.close()


@pytest.mark.parametrize("check", [c.name for c in CHECKS])
def test_the_transformers_server_conforms(check: str, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[check]
    allowed = {conformance.PASSED} | ({conformance.UNSUPPORTED} if BY_NAME[check].refusable
                                      else set())
    assert outcome.status in allowed, outcome

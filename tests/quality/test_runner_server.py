"""The runner against OWLLM's real transformers server with the random-weight demo model:
real prompts, real greedy decoding, real constrained decoding (llguidance)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from owllm.quality import Endpoint, ToolCallSettings, load_cases, run_cases
from tests.inenv.conftest import server_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_endpoint(server_factory: Any, demo_model_dir: Path) -> Endpoint:
    # The tool prompts are ~700-800 tokens with this tokenizer: the default 512 is too short.
    server = server_factory("quality-demo", server_config(demo_model_dir, "tiny-demo",
                                                          max_model_len=1024))
    return Endpoint(server.base_url, "tiny-demo")


def cases() -> list[Any]:
    by_id = {c.id: c for c in load_cases("builtin")}
    return [by_id[i] for i in ("simple-01", "multiple-02", "irrelevance-01")]


def test_unconstrained_random_model_fails_with_typed_reasons(demo_endpoint: Endpoint) -> None:
    report = run_cases(demo_endpoint, cases(), ToolCallSettings(max_tokens=24))
    assert [s.case_id for s in report.samples] == [c.id for c in cases()]
    assert all(s.reason != "request_failed" for s in report.samples), report.table()
    assert all(s.completion_tokens and s.finish_reason for s in report.samples)
    # Random weights do not emit a valid call; their text fails as prose, bad JSON,
    # a cut-off or a loop, never as an exception of the runner.
    first, second, _ = report.samples
    assert {first.reason, second.reason} <= {"prose", "bad_json", "truncated", "runaway"}


def test_constrained_random_model_emits_envelopes(demo_endpoint: Endpoint) -> None:
    report = run_cases(demo_endpoint, cases(), ToolCallSettings(max_tokens=96,
                                                                constrained=True))
    assert all(s.reason != "request_failed" for s in report.samples), report.table()
    # The schema forces a call: no prose, and the irrelevance case cannot pass.
    assert not [s for s in report.samples if s.reason == "prose"], report.table()
    assert report.samples[2].reason in ("unexpected_call", "runaway", "truncated")
    assert all(s.text.lstrip().startswith("{") for s in report.samples), report.table()

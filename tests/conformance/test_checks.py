"""Every conformance check fails on the fault it guards against, with a detail that says
what was wrong, and passes on a conformant endpoint: the stub server of
:mod:`tests.conformance.stub_openai` (real HTTP on loopback), one fault at a time.

The checks' verdicts on OWLLM's own transformers server: test_real_server.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from owllm import conformance
from owllm.conformance import (
    BY_NAME,
    CHECKS,
    Target,
    first_divergence,
    greedy_parity,
    text_divergence,
    token_divergence,
)
from owllm.conformance._core import leaks, names_parameter
from tests.conformance.stub_openai import FAULTS, StubOpenAI

# check -> (the stub fault it must catch, a piece of the measured value or detail)
CAUGHT: dict[str, tuple[str, str]] = {
    "models.list": ("models_missing", "ids []"),
    "chat.basic": ("chat_shape", "role 'bot'"),
    "chat.stream": ("stream_no_finish", "finish_reasons []"),
    "completions.basic": ("completions_404", "HTTP 404"),
    "greedy.repeatable": ("greedy_random", " vs "),
    "response.model_is_id": ("model_path", "/models/stub.gguf"),
    "errors.unknown_model_404": ("unknown_model_200", "chat: HTTP 200"),
    "errors.malformed_json_400": ("bad_json_500", "truncated: HTTP 500"),
    "errors.wrong_shape_400": ("shape_422", "messages a string: HTTP 422"),
    "errors.max_tokens_zero_400": ("max_tokens_500", "-1 streamed: HTTP 500"),
    "errors.no_traceback": ("bad_json_500", "Traceback (most recent call last)"),
    "errors.too_large_413": ("too_large_200", "HTTP 200 for 16777217 bytes"),
    "stop.excluded": ("stop_included", "finish_reason 'stop'"),
    "max_tokens.exact": ("max_tokens_ignored", "max_tokens 3: 6 tokens"),
    "n.two": ("n_ignored", "1 choices"),
    "logprobs.chat": ("logprobs_ignored", "logprobs null"),
    "logprobs.completions": ("logprobs_ignored", "logprobs null"),
    "usage.stream_include": ("usage_missing", "0 usage chunk(s)"),
    "seed.repeatable": ("seed_ignored", " vs "),
    "sampling.tiny_top_p_no_500": ("top_p_500", "top_p 1e-300: HTTP 500"),
    "json_schema.valid": ("json_schema_ignored", "not valid"),
    "tools.required": ("tools_required_ignored", "no tool_calls"),
    "tools.named": ("tools_named_bad_args", "arguments are not JSON"),
    "tools.auto": ("tools_auto_bad_args", "arguments are not JSON"),
    "tools.none": ("tools_none_ignored", "tool_calls True"),
    "tools.stream_deltas": ("tool_name_repeated", "function names ['get_weather', "
                            "'get_weather'"),
    "tools.finish_reason": ("tool_cut_finish", "finish_reason 'tool_calls'"),
    "tools.tool_message_round_trip": ("tool_message_500", "HTTP 500"),
}


@pytest.fixture(scope="module")
def stub() -> Iterator[StubOpenAI]:
    with StubOpenAI() as server:
        yield server


@pytest.fixture
def target(stub: StubOpenAI) -> Iterator[Target]:
    stub.faults = set()
    target = Target(stub.url, stub.model)
    yield target
    target.close()
    stub.faults = set()


def test_every_check_has_a_fault_that_it_catches() -> None:
    assert sorted(CAUGHT) == sorted(c.name for c in CHECKS)
    assert {fault for fault, _ in CAUGHT.values()} <= set(FAULTS)
    assert len(BY_NAME) == len(CHECKS)  # names are unique


def test_a_conformant_endpoint_passes_every_check(target: Target) -> None:
    outcomes = {c.name: o for c, o in conformance.run_all(target)}
    failed = {name: o.to_dict() for name, o in outcomes.items()
              if o.status != conformance.PASSED}
    assert not failed


@pytest.mark.parametrize("check", sorted(CAUGHT))
def test_the_check_fails_on_its_fault(check: str, target: Target, stub: StubOpenAI) -> None:
    fault, clue = CAUGHT[check]
    stub.faults = {fault}
    outcome = conformance.run_check(BY_NAME[check], target)
    assert outcome.status == conformance.FAILED, outcome
    assert clue in f"{outcome.measured} | {outcome.detail}", outcome
    assert outcome.expected


def test_a_400_naming_the_parameter_is_unsupported_any_other_refusal_fails(
        target: Target, stub: StubOpenAI) -> None:
    stub.faults = {"n_refused"}
    named = conformance.run_check(BY_NAME["n.two"], target)
    assert named.status == conformance.UNSUPPORTED
    assert named.measured == "HTTP 400 naming 'n'" and "only n=1" in named.detail
    stub.faults = {"n_refused_unnamed"}
    unnamed = conformance.run_check(BY_NAME["n.two"], target)
    assert unnamed.status == conformance.FAILED
    assert unnamed.measured == "HTTP 400" and "unsupported request" in unnamed.detail


def test_an_endpoint_that_accepts_a_bad_request_and_streams_forever_is_cut_off(
        target: Target, stub: StubOpenAI) -> None:
    stub.faults = {"max_tokens_endless"}
    outcome = conformance.run_check(BY_NAME["errors.max_tokens_zero_400"], target)
    assert outcome.status == conformance.FAILED
    assert outcome.measured == "0: 200, -1: 200, -1 streamed: 200", outcome


def test_a_dead_endpoint_fails_every_check_with_no_answer() -> None:
    with StubOpenAI() as gone:
        url = gone.url
    target = Target(url, "m", timeout=5)
    outcome = conformance.run_check(BY_NAME["chat.basic"], target)
    assert (outcome.status, outcome.measured) == (conformance.FAILED, "no answer")
    assert "Connection" in outcome.detail
    target.close()


def test_names_parameter_and_leaks() -> None:
    assert names_parameter('{"error": {"message": "x", "param": "seed"}}', ("seed",)) == "seed"
    assert names_parameter('{"error": {"message": "only n=1 is supported"}}', ("n",)) == "n"
    assert names_parameter('{"error": {"message": "no can do"}}', ("n",)) is None
    assert names_parameter('{"error": {"message": "top_logprobs > 5"}}', ("logprobs",)) is None
    assert leaks('File "/srv/app.py", line 3, in f') == 'File "/srv/app.py", line 3'
    assert leaks("model at /home/u/models/x.gguf not found") == "/home/u/models/x.gguf"
    assert leaks('{"error": {"message": "max_tokens must be >= 1"}}') is None


def test_first_divergence() -> None:
    assert first_divergence(["a", "b"], ["a", "b"]) is None
    assert first_divergence(["a", "b", "c"], ["a", "x", "c"]) == 1
    assert first_divergence(["a"], ["a", "b"]) == 1
    # pieces cut differently: the texts decide, the finer list names the token
    assert text_divergence(["ab", "c"], ["a", "b", "c"]) is None
    assert text_divergence(["ab", "cd"], ["a", "b", "c", "x"]) == (3, 3)
    assert text_divergence(["a"], ["a", "b"]) == (1, 1)
    # a broken byte rendered three ways (OWLLM U+FFFD, vLLM "", bytes:) is one token
    assert token_divergence(["e", "\ufffd", "8"], ["e", "", "8"]) is None
    assert token_divergence(["e", "bytes:\\x8f", "8"], ["e", "\ufffd", "8"]) is None
    assert token_divergence(["e", "\ufffd", "8"], ["e", "x", "8"]) == 1


def test_greedy_parity_agrees_on_the_same_model_and_reports_a_divergence() -> None:
    with StubOpenAI() as a, StubOpenAI() as b:
        ta, tb = Target(a.url, a.model), Target(b.url, b.model)
        b.faults = {"logprobs_ignored"}  # b's tokens come from its streamed deltas
        same = greedy_parity(ta, tb)
        assert all(r.agrees and len(r.tokens_a) == 16 for r in same), same
        b.faults = {"greedy_random"}
        differ = greedy_parity(ta, tb, prompts=["Once upon a time"])
        ta.close()
        tb.close()
    [result] = differ
    assert result.diverges_at is not None and not result.agrees
    text = result.describe("tf", "llama")
    assert f"diverges at token {result.diverges_at} (character {result.char_at})" in text
    assert repr(result.text_a) in text and repr(result.text_b) in text
    assert result.text_a == "".join(result.tokens_a) and result.text_b == "".join(result.tokens_b)


def test_the_docs_list_every_check() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "conformance.md").read_text()
    assert [c.name for c in CHECKS if f"| `{c.name}` |" not in docs] == []

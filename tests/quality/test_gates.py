"""The gates of owllm.quality.gates against real HTTP stubs with known skills: a config's
``checks:`` in, verdicts, tables and JUnit figures out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from owllm.checks import CATEGORIES as CHECK_CATEGORIES
from owllm.checks import TOOL_CALLS_SCHEMA, LatencyCheck, ParityCheck
from owllm.config import Config, load_config
from owllm.errors import UsageError
from owllm.quality import CATEGORIES, ToolCallSettings
from owllm.quality.gates import gate_items, run_gate, tool_call_settings
from owllm.quality.latency import LatencyReport
from owllm.quality.parity_gate import required_prefix
from tests.quality.stub_quality import QualityStub


@pytest.fixture(scope="module")
def stubs() -> Iterator[dict[str, QualityStub]]:
    with QualityStub("org/a", seed=0) as a, QualityStub("org/b", seed=0) as b, \
            QualityStub("org/c", seed=7, skills=()) as c:
        yield {"a": a, "b": b, "c": c}


def config(tmp_path: Path, stubs: dict[str, QualityStub], checks: str,
           own: dict[str, str] | None = None) -> Config:
    (tmp_path / "configs").mkdir(exist_ok=True)
    models = "".join(f"  {name}:\n    backend: remote\n    base_url: {stub.url}/v1\n"
                     f"    served_model: {stub.model}\n"
                     + (f"    checks: {own[name]}\n" if name in (own or {}) else "")
                     for name, stub in stubs.items())
    path = tmp_path / "configs" / "llm_backends.yaml"
    path.write_text(f"{checks}models:\n{models}")
    return load_config(path)


def server(stubs: dict[str, QualityStub]) -> Any:
    return lambda m: {"model_id": m, "url": stubs[m].url,
                      "extra": {"served_model": stubs[m].model, "startup_s": 0.25}}


def test_tool_call_keys_are_the_runner_settings() -> None:
    fields = set(ToolCallSettings.__dataclass_fields__)
    assert set(TOOL_CALLS_SCHEMA["properties"]) == fields | {"constrained"}
    assert CHECK_CATEGORIES == CATEGORIES


def test_tool_calls_gate_measures_the_stub_skills(tmp_path: Path,
                                                  stubs: dict[str, QualityStub]) -> None:
    cfg = config(tmp_path, stubs, "checks:\n  tool_calls: {samples: 20, min_pass_rate: 0.5}\n")
    assert [i for i, _, _ in gate_items(cfg, "a")] == ["tool_calls"]
    outcome = run_gate(cfg, "a", "tool_calls", server(stubs))
    props = dict(outcome.junit_properties())
    # 20 samples spread round-robin over four categories: 5 simple + 5 multiple pass.
    assert outcome.ok and props["pass_rate"] == "0.5000" and props["samples"] == "20"
    assert props["rate_simple"] == "1.0000" and props["rate_parallel"] == "0.0000"
    assert float(props["pass_rate_low"]) < 0.5 < float(props["pass_rate_high"])
    assert props["quality_verdict"] == "pass" and props["failures_prose"] == "5"
    assert props["failures_unexpected_call"] == "5"
    assert outcome.measured.startswith("50.0% (10/20, 95% CI")


def test_a_threshold_above_the_rate_fails_with_the_table(tmp_path: Path,
                                                         stubs: dict[str, QualityStub]) -> None:
    cfg = config(tmp_path, stubs, "checks:\n  tool_calls: {samples: 8, min_pass_rate: 0.9,"
                                  " categories: [simple, parallel]}\n")
    outcome = run_gate(cfg, "a", "tool_calls", server(stubs))
    assert not outcome.ok
    lines = outcome.table.splitlines()
    assert lines[0] == "tool calls (unconstrained, cases=builtin) on org/a: FAIL"
    assert any(line.split()[:2] == ["overall", "50.0%"] for line in lines)
    assert any(line.split()[:2] == ["threshold", "90.0%"] for line in lines)
    assert "failures: prose 4" in outcome.table
    assert outcome.threshold == "pass rate >= 90.0%"


def test_constrained_both_gives_two_items(tmp_path: Path,
                                          stubs: dict[str, QualityStub]) -> None:
    cfg = config(tmp_path, stubs, "checks:\n  tool_calls: {constrained: both}\n")
    assert [(i, m) for i, _, m in gate_items(cfg, "b")] == [
        ("tool_calls-unconstrained", False), ("tool_calls-constrained", True)]
    settings = tool_call_settings(cfg, "b", True)
    assert settings.constrained and settings.template == "remote"
    with pytest.raises(UsageError, match="has no quality gate 'latency'"):
        run_gate(cfg, "b", "latency", server(stubs))


def test_a_case_file_typo_fails_the_gate_with_its_line(tmp_path: Path,
                                                       stubs: dict[str, QualityStub]) -> None:
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"category": "simple", "prompt": "p", "tools": ["calculator"], '
                     '"expected": {"tool": "calculator", "args": {"expression": "1"}}}\n'
                     '{"category": "simple", "prompt": "q", "tools": ["calculater"], '
                     '"expected": null}\n')
    cfg = config(tmp_path, stubs, f"checks:\n  tool_calls: {{cases: {cases}}}\n")
    outcome = run_gate(cfg, "a", "tool_calls", server(stubs))
    assert not outcome.ok
    assert f"{cases}:2: tools[0]: 'calculater' is not a built-in tool" in outcome.table


def test_latency_gate_reports_and_holds_limits(tmp_path: Path,
                                               stubs: dict[str, QualityStub]) -> None:
    cfg = config(tmp_path, stubs, "checks:\n  latency: {max_startup_s: 1, "
                                  "max_first_token_s: 30, tokens: 8}\n")
    outcome = run_gate(cfg, "a", "latency", server(stubs))
    props = dict(outcome.junit_properties())
    assert outcome.ok, outcome.table
    assert props["startup_s"] == "0.2500" and props["completion_tokens"] == "8"
    assert float(props["first_token_s"]) < 30 and float(props["tokens_per_s"]) > 0
    slow = LatencyReport("m", LatencyCheck(max_startup_s=1, min_tokens_per_s=50), 2.5, 0.1,
                         20.0, 64)
    assert not slow.ok
    assert slow.failures() == ["startup_s 2.5 is not <= 1", "tokens_per_s 20 is not >= 50"]
    assert "first_token_s" in slow.table() and "(not checked)" in slow.table()
    unmeasured = LatencyReport("m", LatencyCheck(max_startup_s=1), None, 0.1, 5.0, 64)
    assert unmeasured.failures() == ["startup_s was not measured (limit <= 1)"]


def test_parity_agrees_on_the_same_seed_and_reports_a_divergence(
        tmp_path: Path, stubs: dict[str, QualityStub]) -> None:
    cfg = config(tmp_path, stubs, "", {"b": "{parity: {with: a}}",
                                       "c": "{parity: {with: a, min_prefix_tokens: 4}}"})
    same = run_gate(cfg, "b", "parity-a", server(stubs))
    assert same.ok and dict(same.junit_properties())["first_divergence"] == "none"
    assert same.measured == "3/3 prompts agree over 16 tokens; first divergence: none"
    assert [i for i, _, _ in gate_items(cfg, "c")] == ["parity-a"]
    outcome = run_gate(cfg, "c", "parity-a", server(stubs))
    props = dict(outcome.junit_properties())
    assert not outcome.ok and props["first_divergence"] == "0"
    assert "diverges at token 0" in outcome.table
    assert "    c: '" in outcome.table and "    a: '" in outcome.table
    assert outcome.measured.endswith("first divergence: token 0")


def test_quantized_tolerance() -> None:
    check = ParityCheck("demo", min_prefix_tokens=16)
    assert required_prefix(check, [None, None]) == (16, "float weights")
    assert required_prefix(check, ["q8_0", None])[0] == 8
    assert required_prefix(check, ["q4_k_m", "q8_0"])[0] == 4
    assert required_prefix(check, ["q2_k"])[0] == 0
    own = ParityCheck("demo", min_prefix_tokens=16, quantized_min_prefix_tokens=3)
    assert required_prefix(own, ["q4_0"])[0] == 3

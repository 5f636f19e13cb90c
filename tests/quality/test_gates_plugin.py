"""The quality gates as a user runs them: real pytest runs (pytester, in subprocesses) of a
project whose config names ``backend: remote`` endpoints with ``checks:`` — the stubs of
:mod:`tests.quality.stub_quality`, served from this process on loopback, with known skills.

Checked: one item per model and gate with readable ids (none for a model without checks);
a threshold above the measured rate fails with the table; the figures reach JUnit; the run
ends with the summary table, under xdist too; ``--owllm-report`` (and its ini key) writes
the Markdown; a typo in ``checks:`` is a usage error naming file:line."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest

from tests.quality.stub_quality import QualityStub

IDS = "pytest_owllm/suites/test_quality.py::test_quality"
CHECKS = """checks:
  tool_calls: {samples: 8, min_pass_rate: 0.4, categories: [simple, parallel]}
  latency: {max_first_token_s: 60, tokens: 4}
"""


@pytest.fixture(scope="module")
def stubs() -> Iterator[dict[str, QualityStub]]:
    with QualityStub("org/good") as good, \
            QualityStub("org/poor", skills=()) as poor, \
            QualityStub("org/twin", seed=3) as twin:
        yield {"good": good, "poor": poor, "twin": twin}


@pytest.fixture
def project(pytester: pytest.Pytester, stubs: dict[str, QualityStub],
            monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("OWLLM_HOME", str(pytester.path / "home"))
    # The checkout's root conftest.py would load as an out-of-tree conftest of the suites
    # folder (as in tests/test_plugin.py).
    monkeypatch.setenv("PYTEST_ADDOPTS", "--noconftest -p no:cacheprovider")
    (pytester.path / "configs").mkdir()
    own = {"poor": "    checks: {latency: null}\n",
           "twin": "    checks: {tool_calls: null, latency: null, parity: {with: good, "
                   "min_prefix_tokens: 2}}\n"}
    models = "".join(f"  {name}:\n    backend: remote\n    base_url: {stub.url}/v1\n"
                     f"    served_model: {stub.model}\n{own.get(name, '')}"
                     for name, stub in stubs.items())
    models += "  bare:\n    backend: remote\n    base_url: http://127.0.0.1:9/v1\n" \
              "    checks: {tool_calls: null, latency: null}\n"
    (pytester.path / "configs" / "llm_backends.yaml").write_text(
        f"{CHECKS}models:\n{models}")
    return pytester


def items(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines if "::" in line]


def test_one_item_per_model_and_gate(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("--collect-only", "-q", "--owllm",
                                          "-m", "owllm_quality")
    assert items(result) == [f"{IDS}[good-tool_calls]", f"{IDS}[good-latency]",
                             f"{IDS}[poor-tool_calls]", f"{IDS}[twin-parity-good]"]


@pytest.mark.slow
def test_gates_under_xdist_table_junit_and_markdown(project: pytest.Pytester) -> None:
    junit, report = project.path / "junit.xml", project.path / "out" / "quality.md"
    result = project.runpytest_subprocess(
        "--owllm", "-m", "owllm_quality", "-n", "2", f"--junitxml={junit}",
        "--owllm-report", "out/quality.md", "-k", "not bare")
    result.assert_outcomes(passed=2, failed=2)
    # The failing gate's message is its table of measured against threshold.
    result.stdout.fnmatch_lines([
        "*quality gate tool_calls of poor failed:",
        "*tool calls (unconstrained, cases=builtin) on org/poor: FAIL",
        "*overall * 0.0% *0/8 *0.0%-32.4%",
        "*threshold * 40.0%",
        "*failures: prose 8"])
    result.stdout.fnmatch_lines(["*greedy parity twin vs good: FAIL",
                                 "*diverges at token 0*", "*twin: '*", "*good: '*"])
    result.stdout.fnmatch_lines([
        "*= OWLLM quality gates =*",
        "model * gate * result * measured * threshold",
        "good * latency * pass * startup *first token*",
        "good * tool_calls * pass * 50.0% (4/8, 95% CI 21.5%-78.5%); simple 4/4, parallel 0/4*",
        "poor * tool_calls * FAIL * 0.0% (0/8, *pass rate >= 40.0%",
        "twin * parity-good * FAIL * 0/3 prompts agree *first 2 tokens agree*",
        f"owllm: quality report written to {report}"])
    props: dict[str, dict[str, str]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        props[case.get("name") or ""] = {p.get("name") or "": p.get("value") or ""
                                         for p in case.iter("property")}
    good = props["test_quality[good-tool_calls]"]
    assert (good["pass_rate"], good["samples"], good["rate_simple"]) == ("0.5000", "8",
                                                                         "1.0000")
    assert good["pass_rate_low"] == "0.2152" and good["pass_rate_high"] == "0.7848"
    latency = props["test_quality[good-latency]"]
    assert float(latency["first_token_s"]) < 60 and "tokens_per_s" in latency
    assert latency["startup_s"]  # the attach ladder's time, from the StateStore row
    assert props["test_quality[twin-parity-good]"]["first_divergence"] == "0"
    text = report.read_text()
    assert text.startswith("# OWLLM quality gates\n\n4 gate(s), 2 passed, 2 not passed.")
    assert "| model | gate | result | measured | threshold |" in text
    assert ("| good | `tool_calls` | pass | 50.0% (4/8, 95% CI 21.5%-78.5%); simple 4/4, "
            "parallel 0/4 | pass rate >= 40.0% |") in text
    assert "| poor | `tool_calls` | **FAIL** |" in text


def test_report_ini_key_and_an_unreachable_model(project: pytest.Pytester) -> None:
    project.makeini("[pytest]\nowllm_report = r.md\n")
    (project.path / "configs" / "llm_backends.yaml").write_text(
        "checks:\n  latency: {}\nmodels:\n  bare:\n    backend: remote\n"
        "    base_url: http://127.0.0.1:9/v1\n    timeout_s: 2\n")
    result = project.runpytest_subprocess("--owllm", "-m", "owllm_quality")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*= OWLLM quality gates =*",
                                 "bare * latency * error * *cannot connect*"])
    assert "| bare | `latency` | **error** | " in (project.path / "r.md").read_text()


def test_a_typo_in_checks_is_a_usage_error_with_its_line(project: pytest.Pytester) -> None:
    (project.path / "configs" / "llm_backends.yaml").write_text(
        "models:\n  m:\n    backend: remote\n    base_url: http://127.0.0.1:9/v1\n"
        "    checks:\n      tool_calls:\n        min_pass_rat: 0.9\n")
    result = project.runpytest_subprocess("--owllm", "-m", "owllm_quality")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*configs/llm_backends.yaml:7: models.m.checks.tool_calls"
                                 ".min_pass_rat: unknown key 'min_pass_rat' (allowed: *"])


def test_marker_and_option_are_registered(project: pytest.Pytester) -> None:
    markers = project.runpytest_subprocess("--markers")
    markers.stdout.fnmatch_lines(["@pytest.mark.owllm_quality: an OWLLM quality gate*"])
    helped = project.runpytest_subprocess("--help")
    helped.stdout.fnmatch_lines(["*--owllm-report=PATH*", "*owllm_report (string):*"])

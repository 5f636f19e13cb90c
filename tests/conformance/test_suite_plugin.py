"""The conformance suite as a user runs it: real pytest runs (pytester, in subprocesses)
against a project whose config names one ``backend: remote`` endpoint — the stub server of
:mod:`tests.conformance.stub_openai`, served from this process on loopback.

Checked: the suite is opt-in and its node ids name model and check; ``-m owllm_conformance``
selects it alone; an xdist run's results (passed / failed / unsupported) reach the JUnit
properties and the controller's table; without the ``openai`` client every item skips naming
the extra."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest

from owllm.conformance import CHECKS
from tests.conformance.stub_openai import StubOpenAI

IDS = "pytest_owllm/suites/test_conformance.py"
BLOCKER = "import sys\nsys.modules['openai'] = None  # import openai -> ImportError\n"


@pytest.fixture(scope="module")
def stub() -> Iterator[StubOpenAI]:
    with StubOpenAI(model="org/stub-7b") as server:
        yield server


@pytest.fixture
def project(pytester: pytest.Pytester, stub: StubOpenAI,
            monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("OWLLM_HOME", str(pytester.path / "home"))
    # The checkout's root conftest.py would load as an out-of-tree conftest of the suites
    # folder (as in tests/test_plugin.py).
    monkeypatch.setenv("PYTEST_ADDOPTS", "--noconftest -p no:cacheprovider")
    (pytester.path / "configs").mkdir()
    (pytester.path / "configs" / "llm_backends.yaml").write_text(
        f"models:\n  stub:\n    backend: remote\n    base_url: {stub.url}/v1\n"
        "    served_model: org/stub-7b\n")
    stub.faults = set()
    return pytester


def items(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines if "::" in line]


def test_the_suite_is_opt_in_and_its_ids_name_model_and_check(
        project: pytest.Pytester) -> None:
    default = items(project.runpytest_subprocess("--collect-only", "-q", "--owllm"))
    assert default and not any("test_conformance" in i for i in default)
    selected = items(project.runpytest_subprocess("--collect-only", "-q", "--owllm",
                                                  "-m", "owllm_conformance"))
    assert selected == [f"{IDS}::test_backend_parity[no-pair]"] + [
        f"{IDS}::test_openai[stub-{c.name}]" for c in CHECKS]
    both = items(project.runpytest_subprocess("--collect-only", "-q",
                                              "--owllm-conformance"))
    assert set(selected) < set(both) and set(default) < set(both)
    # the ini key adds it whenever the suites run; unlike the option it does not run them
    project.makeini("[pytest]\nowllm_conformance = true\n")
    assert items(project.runpytest_subprocess("--collect-only", "-q")) == []
    assert set(items(project.runpytest_subprocess("--collect-only", "-q", "--owllm"))) == set(
        both)


@pytest.mark.slow
def test_results_reach_junit_and_the_table_under_xdist(project: pytest.Pytester,
                                                       stub: StubOpenAI) -> None:
    stub.faults = {"n_refused", "logprobs_ignored"}
    junit = project.path / "junit.xml"
    result = project.runpytest_subprocess("-m", "owllm_conformance", "--owllm-model", "stub",
                                          "-n", "2", "-rfs", f"--junitxml={junit}")
    result.assert_outcomes(passed=len(CHECKS) - 3, failed=2, skipped=2)
    result.stdout.fnmatch_lines([
        "*= OWLLM conformance (model x check) =*",
        "check * stub",
        "models.list * pass",  # the suite's order, whichever worker finished first
        "chat.basic * pass",
        "*short test summary info*",
        "FAILED *test_openai[[]stub-logprobs.chat[]]*",
    ])
    result.stdout.fnmatch_lines(["*unsupported: n.two: refused: *only n=1 is supported*"])
    result.stdout.fnmatch_lines([
        "*no two selected models share a base_model on different backends*"])
    rows = {line.split()[0]: line.split()[1:] for line in result.outlines
            if line.split() and line.split()[0] in {c.name for c in CHECKS}}
    assert rows["chat.basic"] == ["pass"] and rows["logprobs.chat"] == ["FAIL"]
    assert rows["n.two"] == ["unsupported"] and len(rows) == len(CHECKS)
    props: dict[str, dict[str, str]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        props[case.get("name") or ""] = {p.get("name") or "": p.get("value") or ""
                                         for p in case.iter("property")}
    chat = props["test_openai[stub-chat.basic]"]
    assert chat["conformance_status"] == "passed" and chat["conformance_model"] == "stub"
    assert chat["conformance_expected"].startswith("a chat.completion")
    logprobs = props["test_openai[stub-logprobs.chat]"]
    assert (logprobs["conformance_status"], logprobs["conformance_measured"]) == (
        "failed", "logprobs null")
    assert props["test_openai[stub-n.two]"]["conformance_status"] == "unsupported"


def test_strict_mode_fails_an_unsupported_check(project: pytest.Pytester,
                                                stub: StubOpenAI) -> None:
    stub.faults = {"n_refused"}
    lenient = project.runpytest_subprocess("-m", "owllm_conformance", "--owllm-model", "stub",
                                           "-k", "n.two")
    lenient.assert_outcomes(skipped=1)
    strict = project.runpytest_subprocess("-m", "owllm_conformance", "--owllm-model", "stub",
                                          "-k", "n.two", "--owllm-conformance-strict")
    strict.assert_outcomes(failed=1)
    strict.stdout.fnmatch_lines(["*n.two on stub: refused: *only n=1 is supported*",
                                 "n.two * unsupported"])


def test_without_the_openai_client_items_skip_naming_the_extra(
        project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    (project.path / "block_openai.py").write_text(BLOCKER)
    monkeypatch.setenv("PYTHONPATH", str(project.path))
    result = project.runpytest_subprocess("-p", "block_openai", "-m", "owllm_conformance",
                                          "--owllm-model", "stub", "-rs")
    result.assert_outcomes(skipped=len(CHECKS) + 1)
    result.stdout.fnmatch_lines(["*openai client: pip install 'owllm[[]conformance[]]'*"])

"""The plugin's share of the thread budgets (issue #18): while a run lasts, its CPU servers
are told how many of them share the host (``$OWLLM_CPU_SERVERS``, one per CPU model it
selected), and the run leaves the variable as it found it."""

from __future__ import annotations

import os

import pytest

from owllm.backends._common import SERVERS_VAR
from pytest_owllm.fixtures import _servers_var

CONFIG = """
models:
  tiny_a: {base_model: "demo://tiny-llama", device: cpu}
  tiny_b: {base_model: "demo://tiny-llama", backend: llamacpp, device: cpu}
  tiny_c: {base_model: "demo://tiny-llama", backend: vllm, device: cpu}
  big_gpu: {base_model: "org/big-model", device: cuda}
"""

SEEN = """
import os

def test_seen(owllm_manager):
    print("SERVERS=" + os.environ.get("OWLLM_CPU_SERVERS", "unset"))
"""


@pytest.fixture
def project(pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory,
            monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.delenv(SERVERS_VAR, raising=False)  # the repo's own run sets one
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)  # this run's own workers
    monkeypatch.setenv("OWLLM_HOME", str(tmp_path_factory.mktemp("threads-home")))
    (pytester.path / "configs").mkdir()
    (pytester.path / "configs" / "llm_backends.yaml").write_text(CONFIG)
    pytester.makepyfile(test_seen=SEEN)
    return pytester


def test_the_run_counts_its_cpu_servers_and_restores_the_variable(
        project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = project.runpytest("-s", "-p", "no:cacheprovider", "--noconftest")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*SERVERS=unset*"])  # serial: one server computes at once
    # Under 4 xdist workers 3 CPU servers compute at once (the GPU model is not one).
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
    result = project.runpytest("-s", "-p", "no:cacheprovider", "--noconftest")
    result.stdout.fnmatch_lines(["*SERVERS=3*"])
    assert SERVERS_VAR not in os.environ


def test_a_count_set_by_the_user_or_one_server_is_left_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SERVERS_VAR, raising=False)
    with _servers_var(1):  # one CPU server has the host to itself
        assert SERVERS_VAR not in os.environ
    monkeypatch.setenv(SERVERS_VAR, "7")
    with _servers_var(3):
        assert os.environ[SERVERS_VAR] == "7"
    assert os.environ[SERVERS_VAR] == "7"

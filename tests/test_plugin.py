"""The pytest plugin, driven as a user drives it: real pytest runs (pytester, in
subprocesses), real envs, real demo-model servers on loopback."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from owllm.state_store import StateStore
from tests.procs import gone

REPO = Path(__file__).resolve().parents[1]
SUITES = REPO / "model_suites"

CONFIG = """
models:
  tiny_a:
    base_model: "demo://tiny-llama"
    device: cpu
    generation: {max_tokens: 4}
  tiny_b:
    base_model: "demo://tiny-llama"
    model_type: base
    device: cpu
    generation: {max_tokens: 4}
  big_gpu:
    base_model: "org/big-model"
    device: cuda
    use_4bit: true
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One home for the module: the env and the demo model are built once."""
    return tmp_path_factory.mktemp("plugin-home")


@pytest.fixture
def project(pytester: pytest.Pytester, shared_home: Path,
            monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("OWLLM_HOME", str(shared_home))
    (pytester.path / "configs").mkdir()
    (pytester.path / "configs" / "llm_backends.yaml").write_text(CONFIG)
    for name in ("test_env.py", "test_model.py", "test_example_answers.py"):
        (pytester.path / name).write_text((SUITES / name).read_text())
    return pytester


def starts(home: Path, model_id: str) -> int:
    store = StateStore(home / ".owllm" / "state.db")
    return sum(e["status"] == "STARTING"
               for e in store.list_events(kind="server", subject=model_id, limit=1000))


def test_items_ids_and_gpu_marks(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider")
    items = {line for line in result.outlines if "::" in line}
    assert {
        "test_env.py::test_env_health[torch-cpu-transformers]",
        "test_env.py::test_env_health[torch-cu124-transformers-bnb]",
        "test_model.py::test_generate[tiny_a]",
        "test_model.py::test_generate[tiny_b]",
        "test_model.py::test_generate[big_gpu]",
    } <= items
    # one env test per distinct env key, not per model
    assert sum("test_env_health" in i for i in items) == 2
    deselected = project.runpytest_subprocess("--collect-only", "-q", "-m", "not gpu")
    kept = {line for line in deselected.outlines if "::" in line}
    assert not any("big_gpu" in i or "cu124" in i for i in kept)
    assert "test_model.py::test_generate[tiny_a]" in kept


def test_owllm_model_filters(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("--collect-only", "-q", "--owllm-model", "tiny_b")
    items = [line for line in result.outlines if "::" in line]
    assert items and all("tiny_b" in i or "test_env_health[torch-cpu-transformers]" in i
                         for i in items)


def test_ini_keys_work_like_the_options(project: pytest.Pytester) -> None:
    project.makeini("[pytest]\nowllm_models = tiny_a\nowllm_keep_servers = false\n")
    result = project.runpytest_subprocess("--collect-only", "-q")
    items = [line for line in result.outlines if "::" in line]
    assert items and all("tiny_a" in i or "torch-cpu-transformers" in i for i in items)
    overridden = project.runpytest_subprocess("--collect-only", "-q", "--owllm-model", "tiny_b")
    assert any("tiny_b" in line for line in overridden.outlines)
    assert not any("[tiny_a]" in line for line in overridden.outlines)


def test_unknown_model_is_a_usage_error(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("--owllm-model", "nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown model id(s) 'nope'*known ids: tiny_a, tiny_b, "
                                 "big_gpu*"])


def test_gpu_items_skip_with_a_reason_on_cpu(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("-rs", "-m", "gpu", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=4)  # env, smoke and 2 example tests
    result.stdout.fnmatch_lines(["*needs a CUDA GPU; this host has none*"])


def test_xdist_run_starts_each_server_once_and_reports(project: pytest.Pytester,
                                                        shared_home: Path) -> None:
    before = {m: starts(shared_home, m) for m in ("tiny_a", "tiny_b")}
    junit = project.path / "junit.xml"
    result = project.runpytest_subprocess("-m", "not gpu", "-n", "2", f"--junitxml={junit}",
                                          "-p", "no:cacheprovider")
    result.assert_outcomes(passed=7)
    assert {m: starts(shared_home, m) - before[m] for m in before} == {"tiny_a": 1, "tiny_b": 1}
    props = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        for prop in case.iter("property"):
            props.setdefault(case.get("name"), {})[prop.get("name")] = prop.get("value")
    generate = props["test_generate[tiny_a]"]
    assert {"env_key", "port", "startup_s", "tokens_per_s"} <= generate.keys()
    assert generate["env_key"] == "torch-cpu-transformers"
    assert float(generate["tokens_per_s"]) > 0
    env = props["test_env_health[torch-cpu-transformers]"]
    assert env["torch_version"].startswith("2.13.0") and env["python_path"]
    store = StateStore(shared_home / ".owllm" / "state.db")
    for model_id in ("tiny_a", "tiny_b"):
        row = store.get_server(model_id)
        assert row["status"] == "STOPPED"  # the run stopped what it started
        assert gone(row["pid"], row["pid_create_time"])


def test_server_that_cannot_start_fails_with_its_log(project: pytest.Pytester) -> None:
    (project.path / "configs" / "llm_backends.yaml").write_text(
        "models:\n  broken:\n    base_model: /nonexistent/weights\n    device: cpu\n")
    result = project.runpytest_subprocess("-k", "test_generate", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*exited with code*", "*nonexistent/weights*"])
    # No server is left behind: the root conftest's orphan check fails the run otherwise.

"""The pytest plugin, driven as a user drives it: real pytest runs (pytester, in
subprocesses), real envs, real demo-model servers on loopback.

The projects hold only a config (and sometimes a suite of their own): the built-in suites
come from the plugin (``--owllm``, ``--owllm-model`` or the ini key ``owllm_suites``), from
this checkout's ``model_suites/`` as the editable install finds them, outside the rootdir.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from owllm.conformance import CHECKS
from owllm.state_store import StateStore
from pytest_owllm.collection import builtin_suites_dir
from tests.procs import gone

REPO = Path(__file__).resolve().parents[1]
SUITES = REPO / "model_suites"
IDS = "pytest_owllm/suites"  # the built-in suites' node ids outside the rootdir

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

MINE = """
def test_mine(owllm_model_id):
    assert owllm_model_id
"""


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One home for the module: the env and the demo model are built once."""
    return tmp_path_factory.mktemp("plugin-home")


@pytest.fixture
def project(pytester: pytest.Pytester, shared_home: Path,
            monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("OWLLM_HOME", str(shared_home))
    # The editable install's suites live in this checkout, whose root conftest.py pytest
    # would load as an out-of-tree conftest of the suites folder (a wheel has none there).
    monkeypatch.setenv("PYTEST_ADDOPTS", "--noconftest -p no:cacheprovider")
    (pytester.path / "configs").mkdir()
    (pytester.path / "configs" / "llm_backends.yaml").write_text(CONFIG)
    return pytester


def collected(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines if "::" in line]


def starts(home: Path, model_id: str) -> int:
    store = StateStore(home / ".owllm" / "state.db")
    return sum(e["status"] == "STARTING"
               for e in store.list_events(kind="server", subject=model_id, limit=1000))


def test_items_ids_and_gpu_marks(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("--collect-only", "-q", "--owllm")
    items = set(collected(result))
    assert {
        f"{IDS}/test_env.py::test_env_health[torch-cpu-transformers]",
        f"{IDS}/test_env.py::test_env_health[torch-cu124-transformers-bnb]",
        f"{IDS}/test_model.py::test_generate[tiny_a]",
        f"{IDS}/test_model.py::test_generate[tiny_b]",
        f"{IDS}/test_model.py::test_generate[big_gpu]",
        f"{IDS}/test_tools.py::test_tool_round_trip[tiny_a]",
        f"{IDS}/test_fuzz.py::test_constrained_output_is_always_a_valid_call[big_gpu]",
    } <= items
    # one env test per distinct env key, not per model
    assert sum("test_env_health" in i for i in items) == 2
    deselected = project.runpytest_subprocess("--collect-only", "-q", "--owllm", "-m", "not gpu")
    kept = set(collected(deselected))
    assert not any("big_gpu" in i or "cu124" in i for i in kept)
    assert f"{IDS}/test_model.py::test_generate[tiny_a]" in kept


def test_owllm_flag_adds_the_builtin_suites_to_the_projects_own(
        project: pytest.Pytester) -> None:
    (project.path / "model_suites").mkdir()
    (project.path / "model_suites" / "test_mine.py").write_text(MINE)
    alone = collected(project.runpytest_subprocess("--collect-only", "-q"))
    assert alone == ["model_suites/test_mine.py::test_mine[tiny_a]",
                     "model_suites/test_mine.py::test_mine[tiny_b]",
                     "model_suites/test_mine.py::test_mine[big_gpu]"]
    both = collected(project.runpytest_subprocess("--collect-only", "-q", "--owllm"))
    assert set(alone) < set(both)
    suites = {i.split("::")[0] for i in both if i.startswith(IDS + "/")}
    assert suites == {f"{IDS}/test_{name}.py"
                      for name in ("env", "model", "tools", "fuzz", "example_answers")}
    assert len(both) == len(set(both)) == 3 + 2 + 3 * 5  # mine, env keys, 5 tests per model
    # pytest's own ids for a folder outside the rootdir would be bare file names
    assert not any(i.startswith("test_") for i in both)


def test_owllm_model_filters(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("--collect-only", "-q", "--owllm-model", "tiny_b")
    items = collected(result)
    assert f"{IDS}/test_model.py::test_generate[tiny_b]" in items  # implied --owllm
    assert all("tiny_b" in i or "test_env_health[torch-cpu-transformers]" in i for i in items)


def test_ini_keys_work_like_the_options(project: pytest.Pytester) -> None:
    project.makeini("[pytest]\nowllm_suites = true\nowllm_models = tiny_a\n"
                    "owllm_keep_servers = false\n")
    items = collected(project.runpytest_subprocess("--collect-only", "-q"))
    assert f"{IDS}/test_tools.py::test_tool_round_trip[tiny_a]" in items
    assert all("tiny_a" in i or "torch-cpu-transformers" in i for i in items)
    overridden = project.runpytest_subprocess("--collect-only", "-q", "--owllm-model", "tiny_b")
    assert any("tiny_b" in line for line in overridden.outlines)
    assert not any("[tiny_a]" in line for line in overridden.outlines)


def test_ini_owllm_models_alone_does_not_add_the_suites(project: pytest.Pytester) -> None:
    (project.path / "test_mine.py").write_text(MINE)
    project.makeini("[pytest]\nowllm_models = tiny_a\n")
    assert collected(project.runpytest_subprocess("--collect-only", "-q")) == [
        "test_mine.py::test_mine[tiny_a]"]
    # an explicit `owllm_suites = false` also wins over what --owllm-model implies ...
    project.makeini("[pytest]\nowllm_suites = false\n")
    assert collected(project.runpytest_subprocess(
        "--collect-only", "-q", "--owllm-model", "tiny_b")) == ["test_mine.py::test_mine[tiny_b]"]
    # ... but not over --owllm
    forced = collected(project.runpytest_subprocess("--collect-only", "-q", "--owllm"))
    assert f"{IDS}/test_model.py::test_generate[tiny_b]" in forced


def test_copied_suites_are_not_collected_twice(project: pytest.Pytester) -> None:
    """A project that copied some suites (the old way) gets the others from the plugin; a
    copy that was edited is the project's own test and runs next to the built-in one."""
    (project.path / "model_suites").mkdir()
    for name in ("test_env.py", "test_model.py", "test_tools.py"):
        shutil.copy(SUITES / name, project.path / "model_suites" / name)
    edited = (SUITES / "test_tools.py").read_text() + "\n# edited\n"
    (project.path / "model_suites" / "test_tools.py").write_text(edited)
    items = collected(project.runpytest_subprocess("--collect-only", "-q", "--owllm-model",
                                                   "tiny_a"))
    files = sorted({i.split("::")[0] for i in items})
    assert files == ["model_suites/test_env.py", "model_suites/test_model.py",
                     "model_suites/test_tools.py", f"{IDS}/test_example_answers.py",
                     f"{IDS}/test_fuzz.py", f"{IDS}/test_tools.py"]


def test_a_reported_node_id_selects_that_test(project: pytest.Pytester) -> None:
    node = f"{IDS}/test_model.py::test_generate[tiny_b]"
    assert collected(project.runpytest_subprocess("--collect-only", "-q", "--owllm",
                                                  node)) == [node]
    # naming the folder collects it once, with the same ids
    items = collected(project.runpytest_subprocess("--collect-only", "-q", "--owllm", IDS))
    assert node in items and len(items) == len(set(items)) == 2 + 3 * 5


def test_asking_for_the_suites_without_a_config_is_a_usage_error(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_ADDOPTS", "--noconftest -p no:cacheprovider")
    monkeypatch.setenv("OWLLM_HOME", str(pytester.path / "home"))
    result = pytester.runpytest_subprocess("--owllm")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*no model config at {pytester.path}/configs/"
                                 "llm_backends.yaml*owllm init*"])


def repo_items(*args: str) -> list[str]:
    """Collect in this checkout as its own test command does (no conftest: collection only,
    and the clean-tree check would report other people's edits)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                           "--noconftest", "-p", "no:cacheprovider", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [line for line in proc.stdout.splitlines() if "::" in line]


def test_in_the_repo_the_suites_are_collected_once() -> None:
    assert builtin_suites_dir() == SUITES  # the editable install runs the checkout's files
    suites = repo_items("model_suites")
    assert suites and all(i.startswith("model_suites/") for i in suites)
    readme = repo_items("-m", "not gpu")  # the README's test command, testpaths included
    for items in (readme, repo_items("-m", "not gpu", "--owllm")):
        in_suites = [i for i in items if i.startswith("model_suites/")]
        assert sorted(in_suites) == sorted(suites)  # every model of the config, once
    one = repo_items("tests/test_exports.py", "--owllm-model", "demo")
    assert "model_suites/test_model.py::test_generate[demo]" in one
    suites_of_one = [i for i in one if i.startswith("model_suites/")]
    # env + 5 tests for demo, and its 2 quality gates (tool_calls, latency); this repo's ini
    # adds the conformance suite: a check each, and the parity item (one model: nothing to
    # pair, it says so)
    conformance = [i for i in suites_of_one if "test_conformance.py" in i]
    quality = [i for i in suites_of_one if "test_quality.py" in i]
    assert quality == ["model_suites/test_quality.py::test_quality[demo-tool_calls]",
                       "model_suites/test_quality.py::test_quality[demo-latency]"]
    assert len(suites_of_one) - len(conformance) == 8
    assert len(conformance) == len(CHECKS) + 1


def test_unknown_model_is_a_usage_error(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("--owllm-model", "nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown model id(s) 'nope'*known ids: tiny_a, tiny_b, "
                                 "big_gpu*"])


def test_gpu_items_skip_with_a_reason_on_cpu(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("-rs", "-m", "gpu", "--owllm")
    result.assert_outcomes(skipped=6)  # env, smoke, tools, fuzz and 2 example tests
    result.stdout.fnmatch_lines(["*needs a CUDA GPU; this host has none*"])


@pytest.mark.slow
def test_xdist_run_starts_each_server_once_and_reports(project: pytest.Pytester,
                                                        shared_home: Path) -> None:
    before = {m: starts(shared_home, m) for m in ("tiny_a", "tiny_b")}
    junit = project.path / "junit.xml"
    # the tools and fuzz suites have their own tests (tests/cli/test_model.py, tests/tools)
    result = project.runpytest_subprocess("-m", "not gpu and not owllm_tools", "-n", "2",
                                          f"--junitxml={junit}", "--owllm")
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
    steps = ("process_alive", "port_open", "health", "model_listed", "one_token")
    assert all(generate[f"ladder_{step}_ok"] == "True" for step in steps)
    assert float(generate["ladder_one_token_s"]) > 0
    env = props["test_env_health[torch-cpu-transformers]"]
    assert env["torch_version"].startswith("2.13.0") and env["python_path"]
    store = StateStore(shared_home / ".owllm" / "state.db")
    for model_id in ("tiny_a", "tiny_b"):
        row = store.get_server(model_id)
        assert row["status"] == "STOPPED"  # the run stopped what it started
        assert gone(row["pid"], row["pid_create_time"])


@pytest.mark.slow
def test_server_that_cannot_start_fails_with_its_log(project: pytest.Pytester) -> None:
    (project.path / "configs" / "llm_backends.yaml").write_text(
        "models:\n  broken:\n    base_model: /nonexistent/weights\n    device: cpu\n")
    result = project.runpytest_subprocess("-k", "test_generate", "--owllm")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*exited with code*", "*nonexistent/weights*"])
    # No server is left behind: the root conftest's orphan check fails the run otherwise.


# The end of a run, on the stub server of tests/servers (a real process, started fast): the
# project's conftest swaps the backend and the env.  Killed runs: tests/servers/test_reaper.py.
STUB_CONFTEST = """
import pytest
import owllm.servers.manager as manager
from tests.servers.conftest import StubBackend, ThisPython

manager.get_backend = lambda name: StubBackend()


@pytest.fixture(scope="session")
def owllm_registry():
    return ThisPython()
"""
STUB_TEST = """
def test_uses_a_server(owllm_server_factory):
    row = owllm_server_factory("tree")
    assert row["status"] == "RUNNING"
    assert False, "a failing run still stops its servers"
"""


def test_a_failed_run_stops_what_it_started_and_keep_servers_hands_it_over(
        pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "stub-home"
    monkeypatch.setenv("OWLLM_HOME", str(home))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:cacheprovider")
    (pytester.path / "configs").mkdir()
    (pytester.path / "configs" / "llm_backends.yaml").write_text(
        'models:\n  tree: {base_model: stub, server_args: ["--children"]}\n')
    pytester.makeconftest(STUB_CONFTEST)
    pytester.makepyfile(test_stub=STUB_TEST)
    store = StateStore(home / ".owllm" / "state.db")

    pytester.runpytest_subprocess().assert_outcomes(failed=1)
    row = store.get_server("tree")
    assert row is not None and row["status"] == "STOPPED"
    assert gone(row["pid"], row["pid_create_time"])
    assert store.get_server_owner("tree") is None  # the run is over: it owns nothing
    assert not store.list_events(subject="tree", status="REAPED")  # the run itself stopped it

    pytester.runpytest_subprocess("--owllm-keep-servers").assert_outcomes(failed=1)
    kept = store.get_server("tree")
    try:
        assert kept is not None and kept["status"] == "RUNNING" and not gone(kept["pid"])
        assert (store.get_server_owner("tree") or {}).get("kept") is True
    finally:
        from owllm.servers.manager import LLMServerManager

        LLMServerManager(pytester.path / "configs" / "llm_backends.yaml",
                         home=str(home)).stop_all()
    assert gone(kept["pid"], kept["pid_create_time"])


FACTORY_CONFTEST = STUB_CONFTEST + """
import pytest_owllm.factories as factories

factories.EnvRegistry = lambda *args, **kwargs: ThisPython()
other_tree = factories.owllm_server_proc("tree", config="other/llm_backends.yaml",
                                         home=OTHER_HOME)
"""
FACTORY_TEST = """
def test_a_factory_fixture_is_another_home_s_server(other_tree, owllm_server_factory):
    assert other_tree["status"] == "RUNNING"
    assert owllm_server_factory("tree")["pid"] != other_tree["pid"]
"""


def test_factory_fixtures_start_servers_of_another_config_and_home(
        pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, other_home = tmp_path / "stub-home", tmp_path / "other-home"
    monkeypatch.setenv("OWLLM_HOME", str(home))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:cacheprovider")
    for folder in ("configs", "other"):
        (pytester.path / folder).mkdir()
        (pytester.path / folder / "llm_backends.yaml").write_text(
            'models:\n  tree: {base_model: stub, server_args: ["--children"]}\n')
    pytester.makeconftest(FACTORY_CONFTEST.replace("OTHER_HOME", repr(str(other_home))))
    pytester.makepyfile(test_factory=FACTORY_TEST)

    pytester.runpytest_subprocess().assert_outcomes(passed=1)
    for folder in (home, other_home):  # both servers ran, and the run stopped both
        row = StateStore(folder / ".owllm" / "state.db").get_server("tree")
        assert row is not None and row["status"] == "STOPPED", folder
        assert gone(row["pid"], row["pid_create_time"])

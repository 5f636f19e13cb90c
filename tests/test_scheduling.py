"""xdist scheduling that keeps a model's items on one worker (pytest_owllm/scheduling.py,
issue #18): read from node ids, then proven on a real ``-n 2`` run."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from pytest_owllm.scheduling import model_of

MODELS = ("demo", "demo-vllm", "demo-llamacpp", "tiny")


@pytest.mark.parametrize(("nodeid", "model"), [
    ("model_suites/test_model.py::test_generate[demo]", "demo"),
    ("model_suites/test_model.py::test_generate[demo-vllm]", "demo-vllm"),  # longest wins
    ("pytest_owllm/suites/test_conformance.py::test_check[demo-llamacpp-chat.basic]",
     "demo-llamacpp"),
    ("model_suites/test_conformance.py::test_check[chat.basic-demo]", "demo"),
    ("tests/test_mine.py::test_x[tiny-3]", "tiny"),           # a project's own model item
    ("model_suites/test_env.py::test_env_health[torch-cpu-transformers]", None),
    ("model_suites/test_model.py::test_generate", None),
    ("model_suites/test_model.py::test_generate[demonstration]", None),
])
def test_model_is_read_from_the_parameter_id(nodeid: str, model: str | None) -> None:
    assert model_of(nodeid, MODELS) == model


CONFIG = "models:\n" + "".join(
    f"  m{n}: {{base_model: 'demo://tiny-llama', device: cpu}}\n" for n in "abc")

SUITE = """
import pytest

@pytest.mark.parametrize("step", range(4))
def test_step(owllm_model_id, step):
    pass

def test_other():
    pass
"""


def test_a_models_items_run_on_one_worker(pytester: pytest.Pytester) -> None:
    (pytester.path / "configs").mkdir()
    (pytester.path / "configs" / "llm_backends.yaml").write_text(CONFIG)
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("-n", "2", "-v", "-p", "no:cacheprovider",
                                           "--noconftest")
    result.assert_outcomes(passed=13)
    workers: dict[str, set[str]] = defaultdict(set)
    for line in result.outlines:
        found = re.search(r"\[(gw\d)\] .*PASSED test_suite.py::test_step\[(m\w)-", line)
        if found:
            workers[found[2]].add(found[1])
    assert set(workers) == {"ma", "mb", "mc"}
    assert all(len(used) == 1 for used in workers.values()), workers
    assert len(set().union(*workers.values())) == 2  # and both workers had work

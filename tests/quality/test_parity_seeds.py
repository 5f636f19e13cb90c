"""The parity gate on real servers: OWLLM's transformers server with the demo model built
from two seeds (the same tokenizer, other weights) must diverge, and the report must say
where and show both texts; the same weights on two servers agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from owllm.checks import ParityCheck
from owllm.conformance import Target
from owllm.envs.runner import run_in_env
from owllm.quality.parity_gate import run_parity
from tests.inenv.conftest import server_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def seed_one_dir(env_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo-seed1") / "model"
    run_in_env(env_python, "demo_model", ["--out", str(out), "--seed", "1"], timeout=300)
    return out


def test_two_seeds_diverge_and_the_report_shows_both_texts(
        server_factory: Any, demo_model_dir: Path, seed_one_dir: Path) -> None:
    # "quality-demo" is the seed-0 server tests/quality/test_runner_server.py uses too.
    zero = server_factory("quality-demo", server_config(demo_model_dir, "tiny-demo",
                                                         max_model_len=1024))
    one = server_factory("quality-seed1", server_config(seed_one_dir, "tiny-demo-1"))
    check = ParityCheck("seed0", min_prefix_tokens=4, prompts=("Once upon a time",
                                                               "The capital of France is"))
    targets = [Target(zero.base_url, "tiny-demo"), Target(one.base_url, "tiny-demo-1")]
    try:
        report = run_parity(targets[1], targets[0], check, name="seed1", other_name="seed0")
        same = run_parity(targets[0], targets[0], check, name="seed0", other_name="seed0")
    finally:
        for target in targets:
            target.close()
    assert not report.ok and report.first_divergence is not None
    assert report.first_divergence < 4
    table = report.table()
    assert table.startswith("greedy parity seed1 vs seed0: FAIL")
    assert f"first divergence: token {report.first_divergence}" in table
    diverged = [r for r in report.results if not r.agrees]
    for result in diverged:
        assert f"    seed1: {result.text_a!r}" in table
        assert f"    seed0: {result.text_b!r}" in table
        assert result.text_a != result.text_b
    props = dict(report.junit_properties())
    assert props["first_divergence"] == str(report.first_divergence)
    assert same.ok and same.first_divergence is None

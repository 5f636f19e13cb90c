"""The benchmarks' ``--json`` contract (issue #18): each prints one JSON object holding the
issue's figures.  The cheap ones run for real; the heavy ones (suite, serve, backends) only
show they import and take ``--json``.  No timing thresholds: figures are only positive."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_bench(script: str, *args: str, tmp_path: Path, timeout: float = 120) -> dict[str, object]:
    # TMPDIR keeps the benchmark's temporary homes and envs under the test's tmp path.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, str(BENCH / script), *args, "--json"], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)  # one object, nothing else on stdout
    assert isinstance(result, dict)
    return result


def assert_positive(result: dict[str, object], *keys: str) -> None:
    for key in keys:
        value = result[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)


def test_validate_json_has_default_over_jsonschema(tmp_path: Path) -> None:
    result = run_bench("validate.py", "--seconds", "0.05", tmp_path=tmp_path)
    assert_positive(result, "default_over_jsonschema", "toolset_over_jsonschema")


def test_provision_json_has_cold_over_uv_and_concurrent(tmp_path: Path) -> None:
    result = run_bench("provision.py", "--packages", "six", "--skip-pip", tmp_path=tmp_path,
                       timeout=300)
    if result["cold_over_uv"] is None:
        pytest.skip("no uv on this machine: the bare-uv baseline is not measured")
    assert_positive(result, "cold_over_uv", "concurrent4_over_1", "cold_s", "uv_s")
    assert result["pip_s"] is None  # skipped, and null rather than NaN (NaN is not JSON)
    assert result["builds"] == 1  # four concurrent requests, one build
    assert not list(tmp_path.glob("owllm-bench-*")), "the bench left its temp dir behind"


@pytest.mark.parametrize("script", ["suite.py", "serve.py", "backends.py", "validate.py",
                                    "provision.py"])
def test_every_bench_takes_json(script: str) -> None:
    done = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--json" in done.stdout


def test_bad_argument_is_a_clear_error(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCH / "validate.py"), "--seconds", "0"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "--seconds must be > 0" in done.stderr and "Traceback" not in done.stderr

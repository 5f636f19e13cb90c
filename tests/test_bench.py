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
                                    "provision.py", "scale.py"])
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


def test_scale_json_keys_and_p95() -> None:
    """bench/scale.py's --json keys (a real run starts three servers, two of them Ray
    clusters: minutes, so CI pins the contract and the p95 rule without one)."""
    sys.path.insert(0, str(BENCH))
    try:
        import scale
    finally:
        sys.path.remove(str(BENCH))
    assert scale.p95([float(i) for i in range(1, 21)]) == 19.0 and scale.p95([3.0]) == 3.0
    figures = {"rps": 2.0, "p95_s": 4.0, "p50_s": 3.0, "wall_s": 16.0, "start_s": 9.0}
    summary = scale.summarize({"direct": figures, "ray1": {**figures, "rps": 1.0},
                               "ray2": {**figures, "p95_s": 2.0}}, 32, 16)
    assert set(summary) == {"ray1_over_direct_rps", "ray1_over_direct_p95",
                            "ray2_over_ray1_rps", "ray2_over_ray1_p95", "requests", "tokens",
                            "direct", "ray1", "ray2"}
    assert (summary["ray1_over_direct_rps"], summary["ray2_over_ray1_rps"],
            summary["ray2_over_ray1_p95"]) == (0.5, 2.0, 0.5)
    json.dumps(summary)

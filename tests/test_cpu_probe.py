"""The instruction probe runs real machine code in child processes."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest

from owllm import _cpu_probe as cpu_probe

x86 = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                         reason="the probes are x86-64 machine code")


@x86
def test_listed_features_execute_and_absent_ones_are_not_run() -> None:
    flags = cpu_probe.cpu_flags()
    for feature in ("avx512f", "avx512_bf16"):
        result = cpu_probe.run_feature(feature)
        assert result == (cpu_probe.OK if feature in flags else cpu_probe.ABSENT)


@x86
def test_an_instruction_the_cpu_cannot_run_is_a_real_sigill() -> None:
    """Forced on a host without AMX, the AMX probe's child dies of SIGILL."""
    report = cpu_probe.probe_host()
    if report.results["amx_tile"] == cpu_probe.OK:
        pytest.skip("this host runs AMX: no instruction to fault on")
    assert cpu_probe.run_feature("amx_tile", force=True) == "SIGILL"


def test_report_is_cached_per_host(tmp_path: Path) -> None:
    first = cpu_probe.probe_host(tmp_path)
    cache = tmp_path / f"cpu-probe-{cpu_probe.host_id()}.json"
    assert json.loads(cache.read_text())["results"] == first.results
    # A cached report is what later calls read (a fake verdict proves no probe ran).
    data = json.loads(cache.read_text())
    data["results"]["amx_int8"] = "SIGSEGV"
    cache.write_text(json.dumps(data))
    again = cpu_probe.probe_host(tmp_path)
    assert again.results["amx_int8"] == "SIGSEGV" and not again.usable("amx_int8")
    assert again.failing() == {"amx_int8": "SIGSEGV", **first.failing()}
    assert cpu_probe.probe_host(tmp_path, refresh=True).results == first.results


def test_exit_descriptions() -> None:
    assert cpu_probe.describe_exit(-4) == "SIGILL"
    assert cpu_probe.describe_exit(3) == "exit 3"

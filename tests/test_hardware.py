from __future__ import annotations

import json
from pathlib import Path

import pytest

from owllm.errors import ConfigError
from owllm.hardware import ENV_HARDWARE, HardwareProfile, detect_hardware


def test_detects_this_host_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_HARDWARE, raising=False)
    import sys

    profile = detect_hardware()
    assert "torch" not in sys.modules
    assert profile.arch and profile.os
    data = profile.to_dict()
    assert set(data) >= {"gpus", "driver_version", "cuda_version", "arch", "cpu_flags", "os"}
    json.dumps(data)


def test_json_override_simulates_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_HARDWARE, json.dumps(
        {"cuda_version": "12.2", "gpus": [{"name": "NVIDIA A100", "memory_mb": 40960}]}))
    profile = detect_hardware()
    assert profile.cuda_version == "12.2" and profile.has_cuda
    assert profile.gpus[0].name == "NVIDIA A100" and profile.gpus[0].memory_mb == 40960
    assert profile.source == "override"
    assert "CUDA 12.2" in profile.summary()


def test_file_override_yaml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "hw.yaml"
    path.write_text("cuda_version: '12.4'\ngpus: [{name: H100}]\ncpu_flags: [avx2]\n")
    monkeypatch.setenv(ENV_HARDWARE, str(path))
    profile = detect_hardware()
    assert profile.cuda_version == "12.4" and profile.cpu_flags == ("avx2",)


@pytest.mark.parametrize("value, needle", [
    ("{not json", "invalid JSON/YAML"),
    ('{"cuda": "12.2"}', "unknown key"),
    ('{"cuda_version": "twelve"}', "cuda_version"),
    ("/no/such/file.json", "not a JSON object and not a readable file"),
    ('{"gpus": [{"memory_mb": 1}]}', "gpus"),
])
def test_bad_override_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str,
                                         needle: str) -> None:
    monkeypatch.setenv(ENV_HARDWARE, value)
    with pytest.raises(ConfigError) as info:
        detect_hardware()
    assert ENV_HARDWARE in str(info.value) and needle in str(info.value)


def test_profile_is_frozen() -> None:
    profile = HardwareProfile()
    with pytest.raises(AttributeError):
        profile.cuda_version = "12.1"  # type: ignore[misc]

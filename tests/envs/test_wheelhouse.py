"""The wheelhouse that spares a second llama.cpp compile: what it keeps, where, and when."""

from __future__ import annotations

import os
import time
from pathlib import Path

from owllm.envs.installer import Wheelhouse
from owllm.envs.spec import BuildSpec


def spec(*build_env: str) -> BuildSpec:
    return BuildSpec(key="llamacpp-cpu", packages=("llama-cpp-python[server]==0.3.36",),
                     build_env=build_env, keep_built_wheels=("llama-cpp-python",))


def built(cache: Path, name: str, age_s: float = 0.0) -> Path:
    wheel = cache / "sdists-v11" / "pypi" / "x" / "0.1" / "rev" / name
    wheel.parent.mkdir(parents=True, exist_ok=True)
    wheel.write_bytes(b"PK" + name.encode())
    stamp = time.time() - age_s
    os.utime(wheel, (stamp, stamp))
    return wheel


def test_keeps_only_new_builds_of_the_named_distributions(tmp_path: Path) -> None:
    cache, root = tmp_path / "uv", tmp_path / "wheels"
    house = Wheelhouse(spec("CMAKE_ARGS=-DLLAVA_BUILD=OFF"), root=root)
    assert house.find_links() == ()  # nothing kept yet: no --find-links to a missing dir
    started = time.time() - 1
    fresh = built(cache, "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl")
    built(cache, "llama_cpp_python-0.3.35-py3-none-linux_x86_64.whl", age_s=3600)
    built(cache, "other_pkg-1.0-py3-none-any.whl")
    kept = house.harvest(cache, since=started)
    assert [k.name for k in kept] == [fresh.name]
    assert kept[0].read_bytes() == fresh.read_bytes()
    assert house.find_links() == (str(house.path),)
    assert not list(house.path.glob(".*"))  # no temporary copies left
    assert house.harvest(cache, since=started) == []  # already kept


def test_build_settings_get_their_own_folder(tmp_path: Path) -> None:
    cpu = Wheelhouse(spec("CMAKE_ARGS=-DLLAVA_BUILD=OFF"), root=tmp_path)
    cuda = Wheelhouse(spec("CMAKE_ARGS=-DLLAVA_BUILD=OFF -DGGML_CUDA=on"), root=tmp_path)
    assert cpu.path != cuda.path and cpu.path.parent == cuda.path.parent == tmp_path


def test_root_follows_the_environment_variable(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OWLLM_WHEEL_CACHE", str(tmp_path / "elsewhere"))
    assert Wheelhouse(spec()).path.parent == tmp_path / "elsewhere"

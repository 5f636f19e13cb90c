from __future__ import annotations

from pathlib import Path

import pytest

from owllm.backends import backend_names, get_backend, is_attached
from owllm.envs.spec import default_envs_path, find_envs_config, load_envs_config
from owllm.errors import ConfigError


def test_default_envs_yaml_is_valid() -> None:
    envs = load_envs_config(default_envs_path())
    launched = {name for name in backend_names() if not is_attached(name)}  # remote: no env
    assert launched <= set(envs.backends) and "remote" not in envs.backends
    assert "cu121" in envs.cuda_tags and {"bnb", "peft"} <= set(envs.features)


def test_each_backend_owns_its_env_and_envs_yaml_overrides_it(tmp_path: Path) -> None:
    shipped = load_envs_config(default_envs_path())
    for name in sorted(set(backend_names()) - {"remote"}):  # the backend is the source
        assert shipped.backends[name] == dict(get_backend(name).env_packages)
    path = tmp_path / "envs.yaml"
    path.write_text("version: 1\nbackends:\n  vllm: {framework: vllm, packages: [six]}\n"
                    "  mine: {framework: torch, packages: [six]}\n")
    envs = load_envs_config(path)
    assert envs.backends["vllm"] == {"framework": "vllm", "packages": ["six"]}  # whole
    assert envs.backends["transformers"] == shipped.backends["transformers"]
    assert envs.build_spec("vllm-cpu", "vllm", "cpu", ()).packages == ("six",)
    assert "mine" in envs.backends  # an entry for a backend that is not installed stays


def test_envs_yaml_beside_the_model_config_wins(tmp_path: Path, tiny_envs: Path) -> None:
    config = tmp_path / "llm_backends.yaml"
    config.write_text("version: 1\nmodels: {}\n")
    assert find_envs_config(config) == tiny_envs.resolve()
    other = tmp_path / "sub" / "llm_backends.yaml"
    other.parent.mkdir()
    assert find_envs_config(other) == default_envs_path()


@pytest.mark.parametrize("text, needle", [
    ("version: 1\nbackends:\n  transformers:\n    framework: torch\n    pakages: [six]\n",
     "envs.yaml:5: backends.transformers.pakages: unknown key 'pakages'"),
    ("version: 1\nbackends:\n  transformers:\n    packages: [six]\n",
     "envs.yaml:3: backends.transformers: missing required key 'framework'"),
    ("version: 1\nbackends: {}\nbackends: {}\n", "envs.yaml:3: backends: duplicate key"),
    ("version: 1\nbackends: [\n", "invalid YAML"),
    ("", "expected a mapping"),
    ("version: 1\ncuda_tags: [cuda12]\nbackends: {}\n", "cuda_tags[0]"),
    ("version: 1\ncuda_tags: [cu121]\nbackends:\n  t:\n    framework: torch\n"
     "    torch: {cu124: torch==2.6}\n", "backends.t.torch.cu124: not 'cpu'"),
])
def test_bad_envs_yaml_is_a_clear_error(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "envs.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_envs_config(path)
    assert needle in str(info.value), str(info.value)
    assert info.value.exit_code == 2


def test_a_backend_adapts_its_build_env_to_the_host() -> None:
    """The env spec asks the backend (llama.cpp's hook: tests/backends/test_kernels.py);
    a backend without the hook, or known only from envs.yaml, keeps its settings."""
    from owllm.envs.spec import host_build_env

    base = {"CMAKE_ARGS": "-DGGML_NATIVE=ON"}  # a user's own choice: llama.cpp keeps it
    assert host_build_env("llamacpp", "cpu", base) == base
    assert host_build_env("vllm", "cpu", {"X": "1"}) == {"X": "1"}
    assert host_build_env("not-installed", "cpu", {"X": "1"}) == {"X": "1"}

"""The backend contract and registry (``owllm/backends/__init__.py``): the built-in backends
register through OWLLM's own ``owllm.backends`` entry points, each carries everything OWLLM
knows about it, and a broken or incomplete plugin is a clear error naming it."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

import owllm.backends as registry
from owllm.backends import (
    ENTRY_POINT_GROUP,
    TOOL_CALL_RULES,
    Backend,
    backend_names,
    get_backend,
    is_attached,
)
from owllm.backends.llamacpp import CONVERTER
from owllm.envs.spec import default_envs_path, load_envs_config
from owllm.errors import ConfigError, UsageError

REPO = Path(__file__).resolve().parents[2]

BUILT_IN = {"transformers": "owllm.backends.transformers:TransformersBackend",
            "vllm": "owllm.backends.vllm:VllmBackend",
            "llamacpp": "owllm.backends.llamacpp:LlamaCppBackend",
            "remote": "owllm.backends.remote:RemoteBackend",
            "ray": "owllm.backends.ray:RayBackend"}


class Incomplete:
    name = "half"


class BadEnv:
    name = "badenv"
    capabilities = registry.Capabilities()
    quant_types: tuple[str, ...] = ()
    prompt_template = "{tools}{prompt}"
    env_packages = {"framework": "torch", "pakages": ["six"]}

    def config_problems(self, model: object) -> list[tuple[str, str]]:
        return []

    def model_path(self, model: object, ctx: object) -> str:
        return ""

    def launch(self, *args: object) -> None:
        return None


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, metadata.EntryPoint]]:
    """The registry with extra entry points (added by the test), restored afterwards."""
    found = dict(registry._entry_points())
    monkeypatch.setattr(registry, "_entry_points", lambda: found)
    registry._load.cache_clear()
    yield found
    registry._load.cache_clear()


def add(found: dict[str, metadata.EntryPoint], name: str, value: str) -> None:
    found[name] = metadata.EntryPoint(name, value, ENTRY_POINT_GROUP)


def test_builtins_register_through_owllms_own_entry_points() -> None:
    declared = {e.name: e.value for e in metadata.distribution("owllm").entry_points
                if e.group == ENTRY_POINT_GROUP}
    assert declared == BUILT_IN
    assert set(BUILT_IN) <= set(backend_names())
    # the list used only by a never-installed source tree is the same
    assert registry._SOURCE_TREE_BACKENDS == BUILT_IN


@pytest.mark.parametrize("name", backend_names())
def test_every_backend_carries_its_knowledge(name: str) -> None:
    backend = get_backend(name)
    assert isinstance(backend, Backend) and backend.name == name
    assert get_backend(name) is backend  # loaded once
    text = backend.prompt_template.format(tools="- t: x", prompt="P?")
    assert TOOL_CALL_RULES.format() in text and "P?" in text
    assert all(q == q.lower() for q in backend.quant_types)
    if is_attached(name):  # remote: an endpoint OWLLM attaches to provisions no env
        assert not backend.env_packages
        assert name not in load_envs_config(default_envs_path()).backends
        return
    # its env entry passes the envs.yaml schema and is what the shipped envs.yaml resolves
    assert load_envs_config(default_envs_path()).backends[name] == dict(backend.env_packages)


def test_llamacpp_quant_types_are_the_converters() -> None:
    """The converter runs in the model's env and imports no owllm: its list is a copy."""
    from owllm.inenv import gguf_convert  # stdlib-only at import: the host may load it

    assert Path(gguf_convert.__file__) == CONVERTER
    assert tuple(gguf_convert.QUANT_TYPES) == get_backend("llamacpp").quant_types


def test_unknown_names_and_aliases() -> None:
    assert get_backend("llama.cpp") is get_backend("llama_cpp") is get_backend("llamacpp")
    with pytest.raises(UsageError) as caught:
        get_backend("sglang")
    assert "backend 'sglang' is not installed" in str(caught.value)
    assert f"installed backends: {', '.join(backend_names())}" in str(caught.value)


def test_a_plugin_that_fails_to_import_is_named(plugins: dict[str, metadata.EntryPoint]
                                                ) -> None:
    add(plugins, "broken", "no_such_module_owllm:Backend")
    with pytest.raises(UsageError, match=r"backend 'broken' \(no_such_module_owllm:Backend\) "
                                         "failed to load: ModuleNotFoundError"):
        get_backend("broken")


def test_an_incomplete_plugin_is_named(plugins: dict[str, metadata.EntryPoint]) -> None:
    add(plugins, "half", f"{__name__}:Incomplete")
    with pytest.raises(UsageError, match="does not implement the backend contract: missing "
                                         "capabilities, quant_types, prompt_template"):
        get_backend("half")


def test_a_plugins_bad_env_packages_are_a_config_error(
        plugins: dict[str, metadata.EntryPoint], tmp_path: Path) -> None:
    add(plugins, "badenv", f"{__name__}:BadEnv")
    envs = tmp_path / "envs.yaml"
    envs.write_text("version: 1\nbackends: {}\n")
    with pytest.raises(ConfigError) as caught:
        _ = load_envs_config(envs).backends
    assert "backend 'badenv' (tests.backends.test_contract) env_packages: pakages: unknown " \
           "key 'pakages'" in str(caught.value)
    envs.write_text("version: 1\nbackends:\n  badenv: {framework: torch, packages: [six]}\n")
    assert load_envs_config(envs).backends["badenv"]["packages"] == ["six"]  # the override

"""pytest wiring for OWLLM: options and ini keys, markers, collection from the YAML, default
fixtures, and the end-of-run server clean-up.  Logic lives in ``owllm``.

* Tests that ask for ``owllm_model_id`` are parametrized over the selected models, tests that
  ask for ``owllm_env_key`` over their distinct env keys (one per key, not per model).
* Models and envs that need CUDA get the ``gpu`` mark; without a GPU they skip with a reason.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest

from owllm.config import Config, load_config
from owllm.errors import OwllmError
from owllm.hardware import HardwareProfile, detect_hardware
from pytest_owllm import fixtures, settings
from pytest_owllm.fixtures import *  # noqa: F403  (the default fixtures)

MARKERS = {
    "gpu": "needs a CUDA GPU; skipped with a reason elsewhere (deselect with -m 'not gpu')",
    "slow": "takes more than a few seconds (real envs, real servers)",
    "owllm_env": "an OWLLM environment health check",
    "owllm_model": "an OWLLM model server check",
    "owllm_tools": "an OWLLM tool-calling check",
}


class OwllmPlugin:
    """Per-run state: settings, the loaded config, env resolutions.  Loaded lazily so that
    a project that never asks for an OWLLM fixture pays nothing."""

    def __init__(self, config: pytest.Config) -> None:
        self.pytest_config = config
        self.settings = settings.resolve(config)

    @cached_property
    def config(self) -> Config:
        try:
            return load_config(self.settings.config_path)
        except OwllmError as exc:
            raise pytest.UsageError(f"owllm: {exc}") from exc

    @cached_property
    def profile(self) -> HardwareProfile:
        return detect_hardware()

    @cached_property
    def model_ids(self) -> list[str]:
        known = list(self.config.models)
        unknown = [m for m in self.settings.models if m not in known]
        if unknown:
            raise pytest.UsageError(
                f"--owllm-model: unknown model id(s) {', '.join(map(repr, unknown))} in "
                f"{self.settings.config_path}; known ids: {', '.join(known) or '(none)'}")
        return list(self.settings.models) or known

    @cached_property
    def resolutions(self) -> dict[str, Any]:
        from owllm.envs import EnvRegistry

        registry = EnvRegistry(self.settings.home or None, config_path=self.config.path,
                               profile=self.profile)
        # A model that needs CUDA still becomes (gpu-marked) items on a host without one: it
        # is resolved as on a typical CUDA host, so its ids are the ones a GPU run shows.
        nominal = dataclasses.replace(self.profile, cuda_version=NOMINAL_CUDA)
        cuda_host = EnvRegistry(self.settings.home or None, config_path=self.config.path,
                                profile=nominal)
        out = {}
        for model_id in self.model_ids:
            needs_cuda = self.config.models[model_id].device == "cuda"
            use = cuda_host if needs_cuda and not self.profile.has_cuda else registry
            try:
                out[model_id] = use.resolve(model_id)
            except OwllmError as exc:
                raise pytest.UsageError(f"owllm: {exc}") from exc
        return out

    def needs_gpu(self, model_id: str) -> bool:
        resolution = self.resolutions[model_id]
        return bool(resolution.spec.cuda != "cpu")

    def env_keys(self) -> dict[str, bool]:
        """Distinct env keys of the selected models -> whether the key needs a GPU."""
        keys: dict[str, bool] = {}
        for model_id in self.model_ids:
            key = self.resolutions[model_id].key
            keys[key] = keys.get(key, False) or self.needs_gpu(model_id)
        return keys


NOMINAL_CUDA = "12.4"
PLUGIN_KEY = pytest.StashKey[OwllmPlugin]()


def pytest_addoption(parser: pytest.Parser) -> None:
    settings.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    for name, help_text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {help_text}")
    plugin = OwllmPlugin(config)
    config.stash[PLUGIN_KEY] = plugin
    if plugin.settings.models:
        _ = plugin.model_ids  # an unknown --owllm-model is a usage error before collection


def get_plugin(config: pytest.Config) -> OwllmPlugin:
    return config.stash[PLUGIN_KEY]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    plugin = get_plugin(metafunc.config)
    if "owllm_model_id" in metafunc.fixturenames:
        params = [pytest.param(m, id=m, marks=[pytest.mark.gpu] if plugin.needs_gpu(m) else [])
                  for m in plugin.model_ids]
        metafunc.parametrize("owllm_model_id", params, scope="session")
    if "owllm_env_key" in metafunc.fixturenames:
        params = [pytest.param(k, id=k, marks=[pytest.mark.gpu] if gpu else [])
                  for k, gpu in plugin.env_keys().items()]
        metafunc.parametrize("owllm_env_key", params, scope="session")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is None:
        return
    profile = get_plugin(item.config).profile
    if not profile.has_cuda:
        pytest.skip(f"needs a CUDA GPU; this host has none ({profile.summary()})")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput"):
        return  # the controller (or the single process) stops what the run started
    plugin = session.config.stash.get(PLUGIN_KEY, None)
    if plugin is None or plugin.settings.keep_servers:
        return
    fixtures.stop_started_servers(Path(str(session.config._tmp_path_factory.getbasetemp())))  # type: ignore[attr-defined]

"""The state of one pytest run: its settings, the loaded config, the models' env resolutions,
the modules it collected, and the owner of the servers it starts.

Loaded lazily so that a project that never asks for an OWLLM fixture pays nothing.  Both the
hooks (:mod:`pytest_owllm.plugin`) and the fixtures (:mod:`pytest_owllm.fixtures`) read it
from here, so neither imports the other.

The run owns what it starts (:mod:`owllm.servers.reaper`): every server a process of the run
launches is recorded as the run's before the launch, and the controller (or the only
process) stops them when the run ends, unless ``--owllm-keep-servers`` hands them over.  If
the controller dies first (``kill -9``, a cancelled CI job), its watchdog stops them.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import pytest

from owllm.backends import is_attached
from owllm.config import Config, load_config
from owllm.envs import EnvRegistry, Resolution
from owllm.errors import OwllmError
from owllm.hardware import HardwareProfile, detect_hardware
from owllm.servers.reaper import LEDGER, Owner
from pytest_owllm import settings

RUN_INPUT = "owllm_run"  # the run's owner in an xdist worker's workerinput
REAPER_LOG = "owllm-reaper.log"


class OwllmRun:
    """Per-run state: settings, the config, the selected models and their env resolutions."""

    def __init__(self, config: pytest.Config) -> None:
        self.pytest_config = config
        self.settings = settings.resolve(config)
        # Test modules the run has collected, so the built-in suites skip their copies.
        self.collected_modules: set[Path] = set()

    @cached_property
    def config(self) -> Config:
        path = self.settings.config_path
        if not path.exists():
            raise pytest.UsageError(
                f"owllm: no model config at {path}: `owllm init` writes a starter project "
                "(config, example suite, pytest settings), or pass --owllm-config PATH")
        try:
            return load_config(path)
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
    def resolutions(self) -> dict[str, Resolution]:
        """Each selected model's env resolution; a model that needs CUDA still becomes
        (gpu-marked) items on a host without one (:meth:`EnvRegistry.resolve_nominal`)."""
        registry = EnvRegistry(self.settings.home or None, config_path=self.config.path,
                               profile=self.profile)
        out = {}
        for model_id in self.model_ids:
            if is_attached(self.config.models[model_id].backend):
                continue  # an endpoint OWLLM attaches to (remote): no env of ours
            try:
                out[model_id] = registry.resolve_nominal(model_id)
            except OwllmError as exc:
                raise pytest.UsageError(f"owllm: {exc}") from exc
        return out

    def needs_gpu(self, model_id: str) -> bool:
        resolution = self.resolutions.get(model_id)  # None: a remote endpoint's own GPUs
        return resolution is not None and resolution.spec.cuda != "cpu"

    def env_keys(self) -> dict[str, bool]:
        """Distinct env keys of the selected models -> whether the key needs a GPU."""
        keys: dict[str, bool] = {}
        for model_id in self.model_ids:
            if model_id not in self.resolutions:
                continue
            key = self.resolutions[model_id].key
            keys[key] = keys.get(key, False) or self.needs_gpu(model_id)
        return keys

    def cpu_servers(self) -> int:
        """How many servers of the run's models compute on this host's CPU at once (one per
        selected model OWLLM launches on a CPU): their thread budget's divisor."""
        return sum(1 for model_id in self.resolutions if not self.needs_gpu(model_id))

    def collected_elsewhere(self, module: Path) -> bool:
        """Whether the run collected this module already, or a copy of it (same file name
        and bytes: the checkout's ``model_suites/`` next to an installed wheel, or suites
        copied into a project)."""
        if module in self.collected_modules:
            return True
        copies = [p for p in self.collected_modules if p.name == module.name]
        if not copies:
            return False
        content = module.read_bytes()
        return any(p.read_bytes() == content for p in copies if p.is_file())


RUN_KEY = pytest.StashKey[OwllmRun]()
OWNER_KEY = pytest.StashKey[Owner]()


def start_run(config: pytest.Config) -> OwllmRun:
    """The run's state, made once (``pytest_configure``)."""
    run = OwllmRun(config)
    config.stash[RUN_KEY] = run
    return run


def get_run(config: pytest.Config) -> OwllmRun:
    """The run's state."""
    return config.stash[RUN_KEY]


def shared_dir(config: pytest.Config) -> Path:
    """The run's temp folder that every xdist worker (and the controller) can see."""
    base = Path(str(config._tmp_path_factory.getbasetemp()))  # type: ignore[attr-defined]
    return base.parent if hasattr(config, "workerinput") else base


def run_owner(config: pytest.Config) -> Owner:
    """The run's owner as this process sees it: in the controller (or the only process) the
    run itself, with its watchdog; in an xdist worker the controller's, whose watchdog learns
    the worker's homes through the ledger in the run's shared folder."""
    owner = config.stash.get(OWNER_KEY, None)
    if owner is None:
        data = getattr(config, "workerinput", {}).get(RUN_INPUT)
        if data:
            owner = Owner.from_dict(data)
        else:
            base = Path(str(config._tmp_path_factory.getbasetemp()))  # type: ignore[attr-defined]
            owner = Owner.new("pytest", keep=get_run(config).settings.keep_servers,
                              ledger=base / LEDGER, log=base / REAPER_LOG)
        config.stash[OWNER_KEY] = owner
    return owner


def end_run(config: pytest.Config) -> None:
    """The run ends (controller or only process): stop what it owns, release its watchdog."""
    owner = config.stash.get(OWNER_KEY, None)
    if owner is None or not owner.in_owning_process:
        return
    del config.stash[OWNER_KEY]
    owner.end()

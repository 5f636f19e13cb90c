"""pytest wiring for OWLLM: options and ini keys, markers, collection from the YAML, default
fixtures, and the end-of-run server clean-up.  Logic lives in ``owllm``.

* Tests that ask for ``owllm_model_id`` are parametrized over the selected models, tests that
  ask for ``owllm_env_key`` over their distinct env keys (one per key, not per model).
* Models and envs that need CUDA get the ``gpu`` mark; without a GPU they skip with a reason.
* The built-in suites (env, model, tools, fuzz) ship inside this package; ``--owllm``,
  ``--owllm-model`` or the ini key ``owllm_suites`` adds them to whatever the run collects,
  so a project that holds only ``configs/llm_backends.yaml`` gets them from ``pytest`` alone.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Iterable, Iterator
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


# The node id of the built-in suites folder wherever pytest's own would be unreadable: an
# installed wheel's folder, or any folder outside the rootdir.  It is the folder's place in
# the wheel, so ids read the same in every project and for every install.
SUITES_NODEID = "pytest_owllm/suites"


def builtin_suites_dir() -> Path:
    """The folder holding OWLLM's built-in suites.

    An installed wheel has them at ``pytest_owllm/suites/``; an editable install of a checkout
    has no such folder (the wheel maps the checkout's ``model_suites/`` there) and uses the
    checkout's ``model_suites/``.
    """
    package = Path(__file__).resolve().parent
    installed = package / "suites"
    if (installed / "__init__.py").is_file():
        return installed
    checkout = package.parent / "model_suites"
    if (checkout / "__init__.py").is_file() and (package.parent / "pyproject.toml").is_file():
        return checkout
    raise OwllmError(f"OWLLM's built-in suites are missing: neither {installed} nor {checkout}",
                     hint="reinstall owllm")


class OwllmPlugin:
    """Per-run state: settings, the loaded config, env resolutions.  Loaded lazily so that
    a project that never asks for an OWLLM fixture pays nothing."""

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

    @cached_property
    def suites_dir(self) -> Path | None:
        """The built-in suites folder; None in a broken install, which only matters to a run
        that asks for the suites (:meth:`suites_collector` says so)."""
        try:
            return builtin_suites_dir()
        except OwllmError:
            return None

    @cached_property
    def suites_nodeid(self) -> str | None:
        """The node id the suites folder gets from OWLLM, or None where pytest's own is
        readable (a checkout's ``model_suites/`` inside the rootdir: ``model_suites/...``).

        Outside the rootdir pytest would name the folder ``""`` and its modules by bare file
        name (``test_env.py``, clashing with a project's own); inside a venv in the project
        ``.venv/lib/python3.X/site-packages/...``.
        """
        folder = self.suites_dir
        if folder is None:
            return None
        if folder.parent != Path(__file__).resolve().parent:  # not the installed copy
            rootpath = self.pytest_config.rootpath
            if folder.is_relative_to(rootpath):
                return None
        return SUITES_NODEID

    def suites_arg(self, arg: str) -> str:
        """A command-line argument naming a built-in suite by its node id
        (``pytest_owllm/suites/test_model.py::test_generate[demo]``, copied from a report)
        rewritten to the folder's real path; any other argument unchanged."""
        prefix = self.suites_nodeid
        if prefix is None or not (arg == prefix or arg.startswith(prefix + "/")):
            return arg
        if (self.pytest_config.invocation_params.dir / arg.split("::")[0]).exists():
            return arg  # the project has a folder of that name: the argument is its own
        return f"{self.suites_dir}{arg[len(prefix):]}"

    def suites_collector(self, session: pytest.Session) -> BuiltinSuites | None:
        """The suites folder as an extra top-level collector, or None when the run does not
        ask for the suites, names (part of) them itself, or ignores the folder."""
        if not self.settings.suites:
            return None
        try:
            folder = builtin_suites_dir()
        except OwllmError as exc:
            raise pytest.UsageError(f"owllm: {exc}") from exc
        for path in _arg_paths(session.config):
            if path == folder or path.is_relative_to(folder):
                return None  # explicitly chosen suites (or one of them) are all the run wants
        if session.config.hook.pytest_ignore_collect(collection_path=folder,
                                                     config=session.config):
            return None  # --ignore and collect_ignore apply to the suites too
        nodeid = self.suites_nodeid or folder.relative_to(session.config.rootpath).as_posix()
        return BuiltinSuites.from_parent(session, path=folder, nodeid=nodeid)

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
    config.args[:] = [plugin.suites_arg(arg) for arg in config.args]
    if (plugin.settings.models or plugin.settings.suites) and not config.option.help:
        # An unknown --owllm-model, or asking for the suites without a config, is a usage
        # error before collection (not a collection error in every suite module).
        _ = plugin.model_ids


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


class BuiltinSuites(pytest.Package):
    """OWLLM's built-in suites folder as a collector with readable node ids.  It leaves out
    modules the run has already collected, so nothing runs twice."""

    def collect(self) -> Iterable[pytest.Item | pytest.Collector]:
        plugin = get_plugin(self.config)
        for node in super().collect():
            if isinstance(node, pytest.Module) and plugin.collected_elsewhere(node.path):
                continue
            yield node


def _arg_paths(config: pytest.Config) -> Iterator[Path]:
    """The filesystem paths of the run's collection arguments (``--pyargs`` names included)."""
    for arg in config.args:
        strpath = arg.partition("[")[0].split("::")[0]
        if config.option.pyargs:
            try:
                spec = importlib.util.find_spec(strpath)
            except (ImportError, ValueError):
                spec = None
            if spec is not None and spec.origin:
                origin = Path(spec.origin)
                yield origin.parent if spec.submodule_search_locations else origin
                continue
        yield (config.invocation_params.dir / strpath).resolve()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    """Append the built-in suites to the session's top-level collectors, after the run's own
    arguments (outermost wrapper, so after ``--lf``'s reordering too): by the time they are
    collected everything else has been, so copies are known.  Not a collection argument:
    pytest drops an argument that lies under another, and a venv inside the project puts
    the installed suites under the project folder, where pytest never recurses."""
    report = yield
    if isinstance(collector, pytest.Session) and report.passed:
        extra = get_plugin(collector.config).suites_collector(collector)
        if extra is not None:
            report.result.append(extra)
    return report


def pytest_collectstart(collector: pytest.Collector) -> None:
    if isinstance(collector, pytest.Module):
        get_plugin(collector.config).collected_modules.add(collector.path)


@pytest.hookimpl(tryfirst=True)
def pytest_collect_directory(path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """The suites folder named on the command line gets the same ids as when appended."""
    plugin = get_plugin(parent.config)
    if path != plugin.suites_dir or plugin.suites_nodeid is None:
        return None
    return BuiltinSuites.from_parent(parent, path=path, nodeid=plugin.suites_nodeid)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> Any:
    """Built-in suite modules are ``pytest_owllm/suites/test_env.py`` wherever installed."""
    plugin = get_plugin(parent.config)
    if module_path.parent != plugin.suites_dir or plugin.suites_nodeid is None:
        return None
    return pytest.Module.from_parent(parent, path=module_path,
                                     nodeid=f"{plugin.suites_nodeid}/{module_path.name}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is None:
        return
    profile = get_plugin(item.config).profile
    if not profile.has_cuda:
        pytest.skip(f"needs a CUDA GPU; this host has none ({profile.summary()})")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist, in the controller, per worker: the worker learns the run it works for.  The
    controller's watchdog starts now, since the workers launch the servers and only the
    controller can give it its lifeline."""
    owner = fixtures.run_owner(node.config)
    if not owner.keep:
        owner.ensure_reaper()
    node.workerinput[fixtures.RUN_INPUT] = owner.to_dict()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The controller (or the only process) stops what the run started, before other
    plugins look for leftovers; kept servers stay."""
    if not hasattr(session.config, "workerinput"):
        fixtures.end_run(session.config)


def pytest_unconfigure(config: pytest.Config) -> None:
    fixtures.end_run(config)  # a run that ended before its session did (idempotent)

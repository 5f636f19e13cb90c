"""The built-in suites (env, model, tools, fuzz) in a run's collection: where they are, the
node ids they get, and the collector that appends them to a run that asks for them
(``--owllm``, ``--owllm-model``, ini ``owllm_suites``) without collecting anything twice.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from owllm.errors import OwllmError
from pytest_owllm.run import OwllmRun, get_run

# The node id of the built-in suites folder wherever pytest's own would be unreadable: an
# installed wheel's folder, or any folder outside the rootdir.  It is the folder's place in
# the wheel, so ids read the same in every project and for every install.
SUITES_NODEID = "pytest_owllm/suites"
PACKAGE = Path(__file__).resolve().parent


def builtin_suites_dir() -> Path:
    """The folder holding OWLLM's built-in suites.

    An installed wheel has them at ``pytest_owllm/suites/``; an editable install of a checkout
    has no such folder (the wheel maps the checkout's ``model_suites/`` there) and uses the
    checkout's ``model_suites/``.
    """
    installed = PACKAGE / "suites"
    if (installed / "__init__.py").is_file():
        return installed
    checkout = PACKAGE.parent / "model_suites"
    if (checkout / "__init__.py").is_file() and (PACKAGE.parent / "pyproject.toml").is_file():
        return checkout
    raise OwllmError(f"OWLLM's built-in suites are missing: neither {installed} nor {checkout}",
                     hint="reinstall owllm")


@functools.cache  # asked for every collected folder; an install does not move mid-run
def suites_dir() -> Path | None:
    """The built-in suites folder; None in a broken install, which only matters to a run
    that asks for the suites (:func:`suites_collector` says so)."""
    try:
        return builtin_suites_dir()
    except OwllmError:
        return None


def suites_nodeid(config: pytest.Config) -> str | None:
    """The node id the suites folder gets from OWLLM, or None where pytest's own is
    readable (a checkout's ``model_suites/`` inside the rootdir: ``model_suites/...``).

    Outside the rootdir pytest would name the folder ``""`` and its modules by bare file
    name (``test_env.py``, clashing with a project's own); inside a venv in the project
    ``.venv/lib/python3.X/site-packages/...``.
    """
    folder = suites_dir()
    if folder is None:
        return None
    if folder.parent != PACKAGE and folder.is_relative_to(config.rootpath):
        return None  # the checkout's copy, inside the rootdir
    return SUITES_NODEID


def suites_arg(config: pytest.Config, arg: str) -> str:
    """A command-line argument naming a built-in suite by its node id
    (``pytest_owllm/suites/test_model.py::test_generate[demo]``, copied from a report)
    rewritten to the folder's real path; any other argument unchanged."""
    prefix = suites_nodeid(config)
    if prefix is None or not (arg == prefix or arg.startswith(prefix + "/")):
        return arg
    if (config.invocation_params.dir / arg.split("::")[0]).exists():
        return arg  # the project has a folder of that name: the argument is its own
    return f"{suites_dir()}{arg[len(prefix):]}"


def suites_collector(run: OwllmRun, session: pytest.Session) -> BuiltinSuites | None:
    """The suites folder as an extra top-level collector, or None when the run does not
    ask for the suites, names (part of) them itself, or ignores the folder."""
    if not run.settings.suites:
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
    nodeid = (suites_nodeid(session.config)
              or folder.relative_to(session.config.rootpath).as_posix())
    return BuiltinSuites.from_parent(session, path=folder, nodeid=nodeid)


class BuiltinSuites(pytest.Package):
    """OWLLM's built-in suites folder as a collector with readable node ids.  It leaves out
    modules the run has already collected, so nothing runs twice."""

    def collect(self) -> Iterable[pytest.Item | pytest.Collector]:
        run = get_run(self.config)
        for node in super().collect():
            if isinstance(node, pytest.Module) and run.collected_elsewhere(node.path):
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

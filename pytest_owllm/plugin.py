"""pytest wiring for OWLLM: options and ini keys, markers, collection from the YAML, default
fixtures, and the end-of-run server clean-up.  Only hooks live here: the run's state is
:mod:`pytest_owllm.run`, the built-in suites' collection :mod:`pytest_owllm.collection`, env
resolution :class:`owllm.envs.EnvRegistry`.

* Tests that ask for ``owllm_model_id`` are parametrized over the selected models, tests that
  ask for ``owllm_env_key`` over their distinct env keys (one per key, not per model).
* Models and envs that need CUDA get the ``gpu`` mark; without a GPU they skip with a reason.
* The built-in suites (env, model, tools, fuzz) ship inside this package; ``--owllm``,
  ``--owllm-model`` or the ini key ``owllm_suites`` adds them to whatever the run collects,
  so a project that holds only ``configs/llm_backends.yaml`` gets them from ``pytest`` alone.
* The OpenAI conformance suite among them is opt-in (``--owllm-conformance``, ini
  ``owllm_conformance``, or ``-m owllm_conformance``); its table is
  :mod:`pytest_owllm.conformance_report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_owllm import collection, conformance_report, quality_report, scheduling, settings
from pytest_owllm.fixtures import *  # noqa: F403  (the default fixtures)
from pytest_owllm.run import RUN_INPUT, end_run, get_run, run_owner, start_run

MARKERS = {
    "gpu": "needs a CUDA GPU; skipped with a reason elsewhere (deselect with -m 'not gpu')",
    "slow": "takes more than a few seconds (real envs, real servers)",
    "owllm_env": "an OWLLM environment health check",
    "owllm_model": "an OWLLM model server check",
    "owllm_tools": "an OWLLM tool-calling check",
    "owllm_conformance": "an OpenAI API conformance check of a model's endpoint (opt-in: "
                         "--owllm-conformance or -m owllm_conformance)",
    "owllm_quality": "an OWLLM quality gate of a model's checks: (tool-call pass rate, "
                     "latency, backend parity)",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    settings.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    for name, help_text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {help_text}")
    run = start_run(config)
    config.pluginmanager.register(conformance_report.Recorder(), conformance_report.PLUGIN)
    if not hasattr(config, "workerinput"):  # the controller, or the only process
        config.pluginmanager.register(quality_report.Recorder(run.settings.report),
                                      quality_report.PLUGIN)
    config.pluginmanager.register(scheduling.Scheduling(run), scheduling.PLUGIN)
    config.args[:] = [collection.suites_arg(config, arg) for arg in config.args]
    if (run.settings.models or run.settings.suites) and not config.option.help:
        # An unknown --owllm-model, or asking for the suites without a config, is a usage
        # error before collection (not a collection error in every suite module).
        _ = run.model_ids


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    run = get_run(metafunc.config)
    if "owllm_model_id" in metafunc.fixturenames:
        params = [pytest.param(m, id=m, marks=[pytest.mark.gpu] if run.needs_gpu(m) else [])
                  for m in run.model_ids]
        metafunc.parametrize("owllm_model_id", params, scope="session")
    if "owllm_env_key" in metafunc.fixturenames:
        params = [pytest.param(k, id=k, marks=[pytest.mark.gpu] if gpu else [])
                  for k, gpu in run.env_keys().items()]
        if not params and run.model_ids:  # only endpoints OWLLM attaches to (remote)
            params = [pytest.param(None, id="no-env", marks=pytest.mark.skip(
                reason="the selected models are remote endpoints: no env of OWLLM's"))]
        metafunc.parametrize("owllm_env_key", params, scope="session")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    """Append the built-in suites to the session's top-level collectors, after the run's own
    arguments (outermost wrapper, so after ``--lf``'s reordering too): by the time they are
    collected everything else has been, so copies are known.  Not a collection argument:
    pytest drops an argument that lies under another, and a venv inside the project puts
    the installed suites under the project folder, where pytest never recurses."""
    report = yield
    if isinstance(collector, pytest.Session) and report.passed:
        extra = collection.suites_collector(get_run(collector.config), collector)
        if extra is not None:
            report.result.append(extra)
    return report


def pytest_collectstart(collector: pytest.Collector) -> None:
    if isinstance(collector, pytest.Module):
        get_run(collector.config).collected_modules.add(collector.path)


@pytest.hookimpl(tryfirst=True)
def pytest_collect_directory(path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """The suites folder named on the command line gets the same ids as when appended."""
    nodeid = collection.suites_nodeid(parent.config)
    if path != collection.suites_dir() or nodeid is None:
        return None
    return collection.BuiltinSuites.from_parent(parent, path=path, nodeid=nodeid)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> Any:
    """Built-in suite modules are ``pytest_owllm/suites/test_env.py`` wherever installed."""
    nodeid = collection.suites_nodeid(parent.config)
    if module_path.parent != collection.suites_dir() or nodeid is None:
        return None
    return pytest.Module.from_parent(parent, path=module_path,
                                     nodeid=f"{nodeid}/{module_path.name}")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The conformance suite is opt-in (:func:`conformance_report.wanted`): without it a
    run's suites, and this repo's own test run, stay as they were.  The quality gates'
    suite joins when a selected model has ``checks:`` (:func:`quality_report.wanted`)."""
    if quality_report.is_module(collection_path, collection.suites_dir()):
        return None if quality_report.wanted(get_run(config)) else True
    if not conformance_report.is_module(collection_path, collection.suites_dir()):
        return None
    return None if conformance_report.wanted(config, get_run(config).settings.conformance) \
        else True


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is None:
        return
    profile = get_run(item.config).profile
    if not profile.has_cuda:
        pytest.skip(f"needs a CUDA GPU; this host has none ({profile.summary()})")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist, in the controller, per worker: the worker learns the run it works for.  The
    controller's watchdog starts now, since the workers launch the servers and only the
    controller can give it its lifeline."""
    owner = run_owner(node.config)
    if not owner.keep:
        owner.ensure_reaper()
    node.workerinput[RUN_INPUT] = owner.to_dict()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The controller (or the only process) stops what the run started, before other
    plugins look for leftovers; kept servers stay."""
    if not hasattr(session.config, "workerinput"):
        end_run(session.config)


def pytest_unconfigure(config: pytest.Config) -> None:
    end_run(config)  # a run that ended before its session did (idempotent)

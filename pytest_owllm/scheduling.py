"""xdist scheduling that keeps a model's items together (issue #18).

Under ``-n 2`` xdist's default ``load`` scheduling deals the built-in suites' items out one
by one, so both workers need every model's server at once: the second worker waits on the
first one's start lock for each model in turn, then both drive every server together on
cores they share.  Sent as one unit per model, each worker starts and drives its own models'
servers (the servers are still shared under the lock when a test elsewhere wants one).

``--dist loadgroup`` would do it with ``xdist_group`` marks, but does nothing under pytest
9.2 (issue #8's closing note: xdist renames ``item._nodeid``, pytest 9 reads ``_id``), so
this is xdist's ``loadscope`` with OWLLM's scopes: an item of the run's models is scoped by
its model, every other item is a unit of its own (dealt as ``load`` deals it).  It applies
only where the run uses xdist's default ``--dist load``; an explicit other mode is kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from owllm.errors import OwllmError
from pytest_owllm.run import OwllmRun

PLUGIN = "owllm-scheduling"
MODEL_SCOPE = "owllm-model:"


def model_of(nodeid: str, model_ids: Iterable[str]) -> str | None:
    """The model an item tests, read from its node id: a model id is its parameter id
    (``test_generate[demo]``) or one of that id's ``-``-joined parts
    (``test_check[demo-vllm-chat.basic]``); the longest such model id wins.  None for any
    other item.  A test that merely has a part named like a model is grouped with it: that
    changes only which worker runs it."""
    _, bracket, params = nodeid.partition("[")
    if not bracket:
        return None
    padded = f"-{params.rsplit(']', 1)[0]}-"
    return next((m for m in sorted(model_ids, key=len, reverse=True) if f"-{m}-" in padded),
                None)


class Scheduling:
    """Registered by the plugin's ``pytest_configure``; xdist (in the controller) asks it
    for a scheduler once the workers are up."""

    def __init__(self, run: OwllmRun) -> None:
        self.run = run

    def model_ids(self) -> list[str]:
        if not self.run.settings.config_path.exists():
            return []  # no config: no model items (a run that wanted some failed already)
        try:
            return list(self.run.model_ids)
        except (pytest.UsageError, OwllmError):
            return []

    @pytest.hookimpl(optionalhook=True, tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        model_ids = self.model_ids()
        if config.getvalue("dist") != "load" or not model_ids:
            return None  # xdist's own choice
        from xdist.scheduler import LoadScopeScheduling

        class ModelScheduling(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                model = model_of(nodeid, model_ids)
                return nodeid if model is None else MODEL_SCOPE + model

            def remove_node(self, node: Any) -> str | None:
                """As ``loadscope``, except that the item a crashed worker was running is
                reported crashed and not run again (``loadscope`` requeues it with the
                rest of the worker's units; ``load``, the default this replaces, does not,
                and a test that kills its worker would kill a second one)."""
                workload = self.assigned_work.get(node, {})
                crashed = next(((unit, nodeid) for unit in workload.values()
                                for nodeid, done in unit.items() if not done), None)
                if crashed is None:
                    return super().remove_node(node)
                self.assigned_work.pop(node)
                crashed[0][crashed[1]] = True
                self.workqueue.update({scope: unit for scope, unit in workload.items()
                                       if not all(unit.values())})
                for other in self.assigned_work:
                    self._reschedule(other)
                return crashed[1]

        return ModelScheduling(config, log)


"""The server a smoke holds (:func:`serving`) and what the smoke reads off its row: the
kernels chosen, the capabilities probed.  Split from :mod:`owllm.smoke` to keep that module
about the checks themselves; :mod:`owllm.smoke` re-exports these names."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from owllm import capabilities, httpclient
from owllm.errors import OwllmError
from owllm.servers.manager import LLMServerManager
from owllm.servers.ports import LIVE_STATUSES
from owllm.servers.supervisor import is_attached_row


@dataclass(frozen=True)
class Served:
    """The server :func:`serving` holds: its row, and whether it was running already."""

    row: dict[str, Any]
    was_running: bool
    startup_s: float  # 0.0 for a server that was running already


@contextlib.contextmanager
def serving(manager: LLMServerManager, model_id: str, keep: bool = False) -> Iterator[Served]:
    """The model's server for the block: reused when healthy, else started; stopped when the
    block ends unless ``keep`` or it was running before (someone else's: never stopped).

    A failed start raises (:class:`~owllm.errors.ServerError`) before the block runs, with
    nothing left to stop: the manager kills what it launched.
    """
    before = manager.reconcile(model_id)
    was_running = bool(before and before["status"] in LIVE_STATUSES and before.get("healthy"))
    started = time.perf_counter()
    row = manager.start_server(model_id)
    try:
        yield Served(row, was_running,
                     0.0 if was_running else round(time.perf_counter() - started, 3))
    finally:
        if not keep and not was_running:
            manager.stop_server(model_id)


def kernel_report(row: dict[str, Any]) -> dict[str, Any]:
    """``dtype``/``dtype_reason`` and every host-dependent kernel choice of a server row."""
    kernels = (row.get("extra") or {}).get("kernels") or {}
    dtype = kernels.get("dtype") or {}
    return {"dtype": dtype.get("value"), "dtype_reason": dtype.get("reason"),
            "kernels": kernels}


def probed_capabilities(row: dict[str, Any]) -> dict[str, Any]:
    """Capabilities probed on the server itself (``extra.capabilities``: recorded when a
    managed server became ready, or when an endpoint was attached), which override what its
    backend says in general."""
    found = (row.get("extra") or {}).get("capabilities")
    return dict(found) if isinstance(found, dict) else {}


def complete_capabilities(row: dict[str, Any]) -> dict[str, Any]:
    """:func:`probed_capabilities`, with the checks the start left unknown probed now (for
    a server OWLLM runs, also those its row lacks: started by an older OWLLM, or its probe
    broke)."""
    found = probed_capabilities(row)
    missing = capabilities.unknown(found) if is_attached_row(row) else \
        [name for name in capabilities.CHECKS if found.get(name) is None]
    if not missing or not row.get("url"):
        return found
    try:
        results = capabilities.probe_capabilities(
            row["url"], httpclient.served_model(row), headers=httpclient.row_headers(row),
            checks=missing)
    except OwllmError:  # the key's variable is gone: the generate step will say so
        return found
    return capabilities.merge(found, results)

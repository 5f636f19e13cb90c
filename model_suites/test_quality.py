"""The quality gates of each selected model's ``checks:`` (``owllm_quality``): one item per
model and gate, ``test_quality[demo-tool_calls]``, ``test_quality[demo-latency]``,
``test_quality[demo-vllm-parity-demo]`` (``tool_calls-constrained`` and
``tool_calls-unconstrained`` for ``constrained: both``).  A model without checks gets no
items.  A failing gate shows its table of measured against threshold; the figures are JUnit
properties, and the run ends with a summary table (``--owllm-report FILE.md`` writes it as
Markdown).  The gates themselves are :mod:`owllm.quality.gates`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from owllm.quality.gates import gate_items, run_gate
from pytest_owllm.run import get_run

pytestmark = [pytest.mark.owllm_quality, pytest.mark.slow]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "owllm_gate" not in metafunc.fixturenames:
        return
    run = get_run(metafunc.config)
    params = []
    for model_id in run.model_ids:
        checks = run.config.models[model_id].checks
        for item, gate, _ in gate_items(run.config, model_id):
            models = [model_id]
            if gate == "parity" and checks is not None and checks.parity is not None:
                models.append(checks.parity.with_model)
            gpu = any(run.needs_gpu(m) for m in models)
            params.append(pytest.param((model_id, item), id=f"{model_id}-{item}",
                                       marks=[pytest.mark.gpu] if gpu else []))
    if not params:
        params = [pytest.param(None, id="no-checks", marks=pytest.mark.skip(
            reason="no selected model has checks: (see README, Quality gates)"))]
    metafunc.parametrize("owllm_gate", params)


def test_quality(owllm_gate: tuple[str, str], request: pytest.FixtureRequest,
                 owllm_server_factory: Callable[[str], dict[str, Any]],
                 record_property: Callable[[str, Any], None]) -> None:
    model_id, item = owllm_gate
    # First, so that the summary names the gate even when it cannot run (server down).
    record_property("quality_model", model_id)
    record_property("quality_gate", item)
    outcome = run_gate(get_run(request.config).config, model_id, item, owllm_server_factory)
    for name, value in outcome.junit_properties():
        if name not in ("quality_model", "quality_gate"):
            record_property(name, value)
    assert outcome.ok, f"quality gate {item} of {model_id} failed:\n{outcome.table}"

"""The OpenAI conformance suite (``owllm_conformance``): every check of
:mod:`owllm.conformance` against every selected model, through the official ``openai``
client, on whatever serves the model (OWLLM's servers, or a ``backend: remote`` endpoint).

Opt-in: the suite joins a run with ``--owllm-conformance`` (ini ``owllm_conformance``), a
``-m`` expression naming ``owllm_conformance``, or this file named as an argument.  Each item
records ``conformance_*`` JUnit properties (status, measured, expected, detail) and the run
ends with a model x check table.  A check the endpoint refuses with a 400 naming the
parameter is *unsupported*: the item skips with that reason (fails with
``--owllm-conformance-strict``); a parameter silently ignored fails.  Models with the same
``base_model`` on different backends are also compared for greedy parity (completions,
temperature 0, 16 tokens, fixed prompts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from owllm import conformance
from owllm.conformance import BY_NAME, CHECKS, Target
from pytest_owllm.run import get_run
from pytest_owllm.settings import OwllmSettings

pytestmark = [pytest.mark.owllm_conformance, pytest.mark.slow]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Greedy parity pairs: each selected model against the first selected model with the
    same ``base_model`` on another backend."""
    if "owllm_parity_pair" not in metafunc.fixturenames:
        return
    run = get_run(metafunc.config)
    first: dict[str, str] = {}
    params = []
    for model_id in run.model_ids:
        model = run.config.models[model_id]
        if not model.base_model:
            continue
        reference = first.setdefault(model.base_model, model_id)
        if run.config.models[reference].backend == model.backend:
            continue
        gpu = run.needs_gpu(reference) or run.needs_gpu(model_id)
        params.append(pytest.param((reference, model_id), id=f"{reference}-vs-{model_id}",
                                   marks=[pytest.mark.gpu] if gpu else []))
    if not params:
        params = [pytest.param(None, id="no-pair", marks=pytest.mark.skip(
            reason="no two selected models share a base_model on different backends"))]
    metafunc.parametrize("owllm_parity_pair", params)


def _need_openai() -> None:
    if not conformance.openai_available():
        pytest.skip(conformance.EXTRA_HINT)


@pytest.fixture(scope="session")
def owllm_conformance_target(request: pytest.FixtureRequest,
                             owllm_model_id: str) -> Iterator[Target]:
    """The parametrized model's endpoint as a conformance :class:`Target`."""
    _need_openai()
    target = Target.from_row(request.getfixturevalue("owllm_server"))
    yield target
    target.close()


# Before the checks: a check can wedge a non-conformant server (max_tokens -1 on llama.cpp).
def test_backend_parity(owllm_parity_pair: tuple[str, str],
                        owllm_server_factory: Callable[[str], dict[str, Any]],
                        record_property: Callable[[str, Any], None]) -> None:
    _need_openai()
    reference, other = owllm_parity_pair
    targets = [Target.from_row(owllm_server_factory(m)) for m in owllm_parity_pair]
    try:
        results = conformance.greedy_parity(*targets)
    finally:
        for target in targets:
            target.close()
    lines = [r.describe(reference, other) for r in results]
    agree = all(r.agrees for r in results)
    record_property("conformance_model", other)
    record_property("conformance_check", f"parity.greedy[{reference}]")
    record_property("conformance_status", conformance.PASSED if agree else conformance.FAILED)
    record_property("conformance_measured", "; ".join(lines))
    record_property("conformance_expected", f"the same {conformance.parity.MAX_TOKENS} "
                    "greedy tokens for every prompt")
    assert agree, f"greedy parity {reference} vs {other}:\n  " + "\n  ".join(lines)


@pytest.mark.parametrize("check", [c.name for c in CHECKS])
def test_openai(owllm_model_id: str, check: str, owllm_conformance_target: Target,
                owllm_settings: OwllmSettings,
                record_property: Callable[[str, Any], None]) -> None:
    outcome = conformance.run_check(BY_NAME[check], owllm_conformance_target)
    record_property("conformance_model", owllm_model_id)
    record_property("conformance_check", check)
    for key, value in outcome.to_dict().items():
        record_property(f"conformance_{key}", value)
    if outcome.status == conformance.UNSUPPORTED and not owllm_settings.conformance_strict:
        pytest.skip(f"unsupported: {check}: {outcome.detail}")
    assert outcome.status == conformance.PASSED, (
        f"{check} on {owllm_model_id}: {outcome.detail or outcome.measured}\n"
        f"  measured: {outcome.measured}\n  expected: {outcome.expected}")

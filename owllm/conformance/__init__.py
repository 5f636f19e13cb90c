"""The OpenAI conformance suite (issue #15): checks as data and code that any
OpenAI-compatible endpoint can be put through, with or without pytest.

Each :class:`Check` has a stable name (``chat.basic``, ``tools.stream_deltas``, ...), what it
sends, what OpenAI's API requires, and a function of a :class:`Target` (the official
``openai`` client, a raw httpx client, the model id) returning an :class:`Outcome`:
*passed*, *failed*, or *unsupported* — a parameter the endpoint refuses with a 400 that names
it.  A parameter silently ignored is *failed* (see :mod:`owllm.conformance._core`).
The ``openai`` client is the optional extra ``owllm[conformance]``.

    target = Target(root="http://127.0.0.1:8000", model="demo")
    for check, outcome in run_all(target):
        print(check.name, outcome.status, outcome.detail)
"""

from __future__ import annotations

from collections.abc import Iterable

from owllm.conformance import _basic, _params, _tools
from owllm.conformance._core import (
    EXTRA_HINT,
    FAILED,
    PASSED,
    UNSUPPORTED,
    Check,
    Outcome,
    Target,
    openai_available,
    run_check,
)
from owllm.conformance.parity import (
    PromptParity,
    first_divergence,
    greedy_parity,
    text_divergence,
    token_divergence,
)

CHECKS: tuple[Check, ...] = _basic.CHECKS + _params.CHECKS + _tools.CHECKS + _basic.LAST
BY_NAME: dict[str, Check] = {check.name: check for check in CHECKS}

__all__ = ["BY_NAME", "CHECKS", "EXTRA_HINT", "FAILED", "PASSED", "UNSUPPORTED", "Check",
           "Outcome", "PromptParity", "Target", "first_divergence", "greedy_parity",
           "openai_available", "run_all", "run_check", "text_divergence",
           "token_divergence"]


def run_all(target: Target, names: Iterable[str] | None = None) -> list[tuple[Check, Outcome]]:
    """Run the named checks (all by default) against ``target``, in the suite's order."""
    wanted = set(names) if names is not None else None
    return [(check, run_check(check, target)) for check in CHECKS
            if wanted is None or check.name in wanted]

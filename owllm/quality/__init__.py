"""Quality checks that measure how well a model and backend do the job, not only whether the
plumbing works (issue 17): tool-call pass rates over case sets, scored by the strict parser,
with 95% Wilson intervals and typed failure reasons (including runaway output).

    >>> from owllm.quality import Endpoint, ToolCallSettings, run_tool_calls
    >>> report = run_tool_calls(Endpoint(url, "my-model"), ToolCallSettings(samples=40))
    >>> report.ok, str(report.overall), report.reasons()

The gates of a config's ``checks:`` (owllm/checks.py) run through :func:`run_gate`.
"""

from __future__ import annotations

from owllm.quality.cases import (
    BUILTIN,
    CATEGORIES,
    Case,
    CaseFileError,
    ExpectedCall,
    load_cases,
    parse_cases,
    select,
)
from owllm.quality.gates import GateOutcome, gate_items, run_gate
from owllm.quality.latency import LatencyReport, measure_latency
from owllm.quality.parity_gate import ParityReport, required_prefix, run_parity
from owllm.quality.report import Rate, Sample, ToolCallReport, wilson_interval
from owllm.quality.runner import Endpoint, ToolCallSettings, run_cases, run_tool_calls
from owllm.quality.scoring import REASONS, Score, runaway_kind, score

__all__ = [
    "BUILTIN",
    "CATEGORIES",
    "REASONS",
    "Case",
    "CaseFileError",
    "Endpoint",
    "ExpectedCall",
    "GateOutcome",
    "LatencyReport",
    "ParityReport",
    "Rate",
    "Sample",
    "Score",
    "ToolCallReport",
    "ToolCallSettings",
    "gate_items",
    "load_cases",
    "measure_latency",
    "parse_cases",
    "required_prefix",
    "run_cases",
    "run_gate",
    "run_parity",
    "run_tool_calls",
    "runaway_kind",
    "score",
    "select",
    "wilson_interval",
]

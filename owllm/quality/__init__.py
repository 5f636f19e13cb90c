"""Quality checks that measure how well a model and backend do the job, not only whether the
plumbing works (issue 17): tool-call pass rates over case sets, scored by the strict parser,
with 95% Wilson intervals and typed failure reasons (including runaway output).

    >>> from owllm.quality import Endpoint, ToolCallSettings, run_tool_calls
    >>> report = run_tool_calls(Endpoint(url, "my-model"), ToolCallSettings(samples=40))
    >>> report.ok, str(report.overall), report.reasons()
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
    "Rate",
    "Sample",
    "Score",
    "ToolCallReport",
    "ToolCallSettings",
    "load_cases",
    "parse_cases",
    "run_cases",
    "run_tool_calls",
    "runaway_kind",
    "score",
    "select",
    "wilson_interval",
]

"""Run one quality gate of a model's ``checks:`` (owllm/checks.py) against running servers
and give one typed outcome: the verdict, one-line measured and threshold texts for summary
tables, the table a failing gate shows, and the figures for JUnit properties.

The pytest suite (``model_suites/test_quality.py``) is a thin loop over :func:`run_gate`;
a CLI or a script can call it the same way with any ``server(model_id) -> row`` function
(the StateStore row of a RUNNING server: ``LLMServerManager.start_server``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from owllm import httpclient
from owllm.checks import Checks
from owllm.config import Config
from owllm.conformance import Target
from owllm.errors import OwllmError, UsageError
from owllm.quality.latency import measure_latency
from owllm.quality.parity_gate import run_parity
from owllm.quality.runner import Endpoint, ToolCallSettings, run_tool_calls

ServerFn = Callable[[str], Mapping[str, Any]]


@dataclass(frozen=True)
class GateOutcome:
    """One gate item's result (``item`` as in the test id: ``tool_calls``, ``latency``,
    ``parity-demo``)."""

    model: str
    item: str
    gate: str
    ok: bool
    measured: str
    threshold: str
    table: str
    properties: tuple[tuple[str, str], ...] = ()

    def junit_properties(self) -> list[tuple[str, str]]:
        """The gate's figures, then what the run's summary table is made of (``quality_*``,
        read back by the plugin's recorder under xdist too)."""
        return [*self.properties, ("quality_model", self.model), ("quality_gate", self.item),
                ("quality_verdict", "pass" if self.ok else "fail"),
                ("quality_measured", self.measured), ("quality_threshold", self.threshold)]


def gate_items(config: Config, model_id: str) -> list[tuple[str, str, bool | None]]:
    """The (item, gate, constrained mode) of a model's gates; empty without checks."""
    checks: Checks | None = config.models[model_id].checks
    return checks.items() if checks else []


def run_gate(config: Config, model_id: str, item: str, server: ServerFn) -> GateOutcome:
    """Run the gate ``item`` of ``model_id``; ``server(id)`` gives a running server's row."""
    found = {name: (gate, mode) for name, gate, mode in gate_items(config, model_id)}
    if item not in found:
        raise UsageError(f"model {model_id!r} has no quality gate {item!r}",
                         hint=f"its gates: {', '.join(found) or '(none)'}")
    gate, mode = found[item]
    checks = config.models[model_id].checks
    assert checks is not None  # found above
    if gate == "tool_calls":
        return _tool_calls(config, model_id, item, bool(mode), server)
    if gate == "latency":
        assert checks.latency is not None
        latency = measure_latency(server(model_id), checks.latency,
                                  chat=config.models[model_id].model_type == "instruct",
                                  model_id=model_id)
        return _outcome(model_id, item, gate, latency)
    assert checks.parity is not None
    other = checks.parity.with_model
    a, b = (Target.from_row(dict(server(m))) for m in (model_id, other))
    quants = [config.models[m].quant if config.models[m].backend == "llamacpp" else None
              for m in (model_id, other)]
    try:
        parity = run_parity(a, b, checks.parity, name=model_id, other_name=other,
                            quants=quants)
    finally:
        a.close()
        b.close()
    return _outcome(model_id, item, gate, parity)


class _Report(Protocol):
    @property
    def ok(self) -> bool: ...
    def measured(self) -> str: ...
    def threshold(self) -> str: ...
    def table(self) -> str: ...
    def junit_properties(self) -> list[tuple[str, str]]: ...


def _outcome(model_id: str, item: str, gate: str, report: _Report) -> GateOutcome:
    return GateOutcome(model_id, item, gate, report.ok, report.measured(), report.threshold(),
                       report.table(), tuple(report.junit_properties()))


def tool_call_settings(config: Config, model_id: str, constrained: bool) -> ToolCallSettings:
    """The runner's settings of a model's ``tool_calls`` gate in one mode; the prompt
    template defaults to the model's backend's (the prompt that backend's smoke sends)."""
    checks = config.models[model_id].checks
    if checks is None or checks.tool_calls is None:
        raise UsageError(f"model {model_id!r} has no tool_calls gate")
    values = {"template": config.models[model_id].backend, **checks.tool_calls.settings,
              "constrained": constrained, "categories": checks.tool_calls.categories}
    return ToolCallSettings.from_dict(values, where=f"models.{model_id}.checks.tool_calls")


def _tool_calls(config: Config, model_id: str, item: str, constrained: bool,
                server: ServerFn) -> GateOutcome:
    settings = tool_call_settings(config, model_id, constrained)
    row = dict(server(model_id))
    endpoint = Endpoint(str(row["url"]), httpclient.served_model(row),
                        httpclient.row_headers(row))
    try:
        report = run_tool_calls(endpoint, settings)
    except OwllmError as exc:  # a case file with a typo: its file:line is the message
        return GateOutcome(model_id, item, "tool_calls", False, f"not run: {exc.message}",
                           f"pass rate >= {settings.min_pass_rate:.1%}",
                           f"tool calls on {model_id}: not run\n  {exc}")
    return _outcome(model_id, item, "tool_calls", report)

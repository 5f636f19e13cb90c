"""The conformance suite's wiring: when its module joins a run, and the model x check table
at the end of the run.

Results travel in each report's ``user_properties`` (the items' ``conformance_*``
properties), so under xdist the controller sees every worker's results in
``pytest_runtest_logreport`` and prints one table."""

from __future__ import annotations

from pathlib import Path

import pytest

from owllm.conformance import CHECKS

MODULE = "test_conformance.py"
MARKER = "owllm_conformance"
PLUGIN = "owllm-conformance-table"
SHORT = {"passed": "pass", "failed": "FAIL", "unsupported": "unsupported"}


def wanted(config: pytest.Config, asked: bool) -> bool:
    """Whether the run includes the conformance suite: ``--owllm-conformance`` (ini
    ``owllm_conformance``, passed in as ``asked``), a ``-m`` expression naming its marker,
    or its module named as an argument."""
    if asked or MARKER in (config.option.markexpr or ""):
        return True
    return any(Path(arg.split("::")[0]).name == MODULE for arg in config.args)


def is_module(path: Path, suites: Path | None) -> bool:
    return path.name == MODULE and suites is not None and path.parent == suites


class Recorder:
    """Keeps each finished conformance item's (model, check) -> status, and prints the
    table at the end of the run (a plugin object: hooks get no config of their own)."""

    def __init__(self) -> None:
        self.results: dict[tuple[str, str], str] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        props = dict(report.user_properties)
        if "conformance_check" in props:
            status = str(props.get("conformance_status") or report.outcome)
            self.results[(str(props.get("conformance_model")),
                          str(props["conformance_check"]))] = status

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.results:
            return
        terminalreporter.write_sep("=", "OWLLM conformance (model x check)")
        for line in table(self.results):
            terminalreporter.write_line(line)


def table(results: dict[tuple[str, str], str]) -> list[str]:
    """The results as text lines: one row per check, one column per model."""
    models = sorted({m for m, _ in results})
    order = {check.name: i for i, check in enumerate(CHECKS)}  # the suite's order
    checks = sorted({c for _, c in results}, key=lambda c: (order.get(c, len(order)), c))
    width = max(len(c) for c in checks) + 2
    cols = [max(len(m), 11) + 2 for m in models]
    lines = ["check".ljust(width) + "".join(m.ljust(w) for m, w in zip(models, cols,
                                                                    strict=True))]
    for check in checks:
        cells = [SHORT.get(results.get((m, check), "-"), results.get((m, check), "-"))
                 for m in models]
        lines.append(check.ljust(width) + "".join(c.ljust(w) for c, w in zip(
            cells, cols, strict=True)))
    return [line.rstrip() for line in lines]

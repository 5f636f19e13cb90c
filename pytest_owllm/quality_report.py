"""The quality gates' summary: one table of every gate item of the run (model, gate, result,
measured, threshold) at the end of the terminal output, and the same as Markdown in
``--owllm-report FILE.md`` (ini ``owllm_report``), ready for a CI step summary
(``cat FILE.md >> $GITHUB_STEP_SUMMARY``).

Results travel in each report's ``user_properties`` (the gate's ``quality_*`` JUnit
properties, :meth:`owllm.quality.gates.GateOutcome.junit_properties`), so under xdist the
controller sees every worker's gates in ``pytest_runtest_logreport``.  An item that never
reached its gate (its server did not start, it was skipped) is listed from its node id."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_owllm.run import OwllmRun

MODULE = "test_quality.py"
MARKER = "owllm_quality"
PLUGIN = "owllm-quality-summary"
_PARAM = re.compile(r"\[(?P<param>[^\]]*)\]$")
HEADER = ("model", "gate", "result", "measured", "threshold")


def is_module(path: Path, suites: Path | None) -> bool:
    return path.name == MODULE and suites is not None and path.parent == suites


def wanted(run: OwllmRun) -> bool:
    """Whether the gates suite joins the run: some selected model has ``checks:`` (a run
    without gates collects nothing of it, not even a skipped placeholder).  Without a config
    the suite is collected and says why it cannot run, as every suite does."""
    if not run.settings.config_path.exists():
        return True
    return any(run.config.models[m].checks for m in run.model_ids)


@dataclass(frozen=True)
class Row:
    """One gate item as the summary shows it."""

    model: str
    gate: str
    result: str  # pass | FAIL | error | skipped
    measured: str = ""
    threshold: str = ""

    def cells(self) -> tuple[str, str, str, str, str]:
        return (self.model, self.gate, self.result, self.measured, self.threshold)


class Recorder:
    """Collects the gate items' rows; prints the table and writes the Markdown at the end
    (a plugin object registered in the controller or the only process)."""

    def __init__(self, report_path: Path | None = None) -> None:
        self.report_path = report_path
        self.rows: dict[str, Row] = {}  # by node id

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = {k: str(v) for k, v in report.user_properties}
        if "quality_gate" in props and report.when == "call":
            if "quality_verdict" not in props:  # the gate raised before its verdict
                row = Row(props.get("quality_model", "?"), props["quality_gate"], "error",
                          _reason(report))
            else:
                row = Row(props.get("quality_model", "?"), props["quality_gate"],
                          "pass" if props["quality_verdict"] == "pass" and report.passed
                          else "FAIL", props.get("quality_measured", ""),
                          props.get("quality_threshold", ""))
            self.rows[report.nodeid] = row
            return
        if MARKER not in report.keywords or report.nodeid in self.rows:
            return
        match = _PARAM.search(report.nodeid)
        if match and match.group("param") == "no-checks":
            return
        if report.failed or (report.skipped and report.when == "setup"):
            self.rows[report.nodeid] = Row(match.group("param") if match else report.nodeid,
                                           "", "error" if report.failed else "skipped",
                                           _reason(report))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Write the Markdown (before the terminal summary, which says where it went)."""
        if self.report_path is not None:
            write_markdown(self.report_path, self.ordered())

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.rows:
            terminalreporter.write_sep("=", "OWLLM quality gates")
            for line in text_table(self.ordered()):
                terminalreporter.write_line(line)
        if self.report_path is not None:
            terminalreporter.write_line(f"owllm: quality report written to {self.report_path}")

    def ordered(self) -> list[Row]:
        return sorted(self.rows.values(), key=lambda r: (r.model, r.gate))


def _reason(report: pytest.TestReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", "") or str(report.longrepr or "")
    return " ".join(message.split())[:200]


def text_table(rows: list[Row]) -> list[str]:
    """The rows as aligned text lines, a header first."""
    cells = [HEADER, *(r.cells() for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER) - 1)]
    return ["  ".join(c[i].ljust(widths[i]) for i in range(len(widths))) + "  " + c[-1]
            for c in cells]


def _md(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ")


def markdown(rows: list[Row]) -> str:
    """The summary as a GitHub-flavoured Markdown document."""
    failed = sum(r.result != "pass" for r in rows)
    lines = ["# OWLLM quality gates", ""]
    if not rows:
        return "\n".join([*lines, "No quality gate ran (no model with `checks:` selected).", ""])
    lines += [f"{len(rows)} gate(s), {len(rows) - failed} passed, {failed} not passed.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows:
        result = row.result if row.result == "pass" else f"**{row.result}**"
        cells = (row.model, f"`{row.gate}`" if row.gate else "", result, row.measured,
                 row.threshold)
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, rows: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(rows), encoding="utf-8")

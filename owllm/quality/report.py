"""Typed results of a tool-call run: per-sample scores, pass rates with 95% Wilson intervals,
counts per category, reason and parser code, and the verdict against a threshold.

``to_dict()`` is what a gate puts into JUnit properties and JSON; :meth:`ToolCallReport.table`
is the text a failing gate shows.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from owllm.quality.cases import CATEGORIES

Z95 = 1.959963984540054  #: the normal quantile of a two-sided 95% interval


def wilson_interval(passed: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% by default).

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0 and n
    successes, which is where small sample sets live; ``(0.0, 1.0)`` for no samples."""
    if total <= 0:
        return (0.0, 1.0)
    if not 0 <= passed <= total:
        raise ValueError(f"passed={passed} is outside 0..{total}")
    p = passed / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Sample:
    """One case sent once: what came back and how it scored."""

    case_id: str
    category: str
    reason: str
    code: str | None = None
    path: str | None = None
    detail: str = ""
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int | None = None
    seconds: float = 0.0
    attempts: int = 1

    @property
    def passed(self) -> bool:
        return self.reason == "pass"

    def to_dict(self) -> dict[str, Any]:
        return {"case": self.case_id, "category": self.category, "passed": self.passed,
                "reason": self.reason, "code": self.code, "path": self.path,
                "detail": self.detail, "text": self.text, "finish_reason": self.finish_reason,
                "completion_tokens": self.completion_tokens, "seconds": round(self.seconds, 3),
                "attempts": self.attempts}


@dataclass(frozen=True)
class Rate:
    """``passed`` of ``total`` with its rate and 95% Wilson interval."""

    passed: int
    total: int

    @property
    def rate(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.passed, self.total)

    def to_dict(self) -> dict[str, Any]:
        low, high = self.interval
        return {"passed": self.passed, "samples": self.total, "pass_rate": round(self.rate, 4),
                "ci95": [round(low, 4), round(high, 4)]}

    def __str__(self) -> str:
        low, high = self.interval
        return f"{self.rate:.1%} ({self.passed}/{self.total}, 95% CI {low:.1%}-{high:.1%})"


@dataclass(frozen=True)
class ToolCallReport:
    """A whole run: the samples and everything computed from them, and the verdict.

    ``ok`` is ``rate >= min_pass_rate`` on the point estimate (the interval is reported
    beside it so a reader sees how much the verdict could move with more samples), and at
    least one request answered: a threshold of 0 must not pass an endpoint that is down."""

    base_url: str
    model: str
    constrained: bool
    cases: str
    samples: tuple[Sample, ...]
    min_pass_rate: float = 0.0
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def overall(self) -> Rate:
        return Rate(sum(s.passed for s in self.samples), len(self.samples))

    @property
    def rate(self) -> float:
        return self.overall.rate

    @property
    def interval(self) -> tuple[float, float]:
        return self.overall.interval

    @property
    def ok(self) -> bool:
        answered = any(s.reason != "request_failed" for s in self.samples)
        return answered and self.rate >= self.min_pass_rate

    def by_category(self) -> dict[str, Rate]:
        """Rates of the categories that have samples, in BFCL order."""
        return {c: Rate(sum(s.passed for s in group), len(group))
                for c in CATEGORIES
                if (group := [s for s in self.samples if s.category == c])}

    def reasons(self, category: str | None = None) -> dict[str, int]:
        """How many samples got each failing reason (``pass`` left out)."""
        counts = Counter(s.reason for s in self.samples
                         if not s.passed and category in (None, s.category))
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def codes(self) -> dict[str, int]:
        """How many failing samples the strict parser rejected with each code."""
        counts = Counter(s.code for s in self.samples if s.code and not s.passed)
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def runaways(self) -> list[Sample]:
        return [s for s in self.samples if s.reason == "runaway"]

    def to_dict(self, *, samples: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "base_url": self.base_url, "model": self.model, "constrained": self.constrained,
            "cases": self.cases, **self.overall.to_dict(), "min_pass_rate": self.min_pass_rate,
            "ok": self.ok, "seconds": round(self.seconds, 3),
            "categories": {c: {**r.to_dict(), "reasons": self.reasons(c)}
                           for c, r in self.by_category().items()},
            "reasons": self.reasons(), "codes": self.codes(),
            "runaway_tokens": [s.completion_tokens for s in self.runaways()],
            "settings": dict(self.settings),
        }
        if samples:
            out["sample_results"] = [s.to_dict() for s in self.samples]
        return out

    def junit_properties(self) -> list[tuple[str, str]]:
        """The figures a gate records on its JUnit test case (``record_property``)."""
        low, high = self.interval
        props = [("pass_rate", f"{self.rate:.4f}"), ("pass_rate_low", f"{low:.4f}"),
                 ("pass_rate_high", f"{high:.4f}"), ("samples", str(len(self.samples))),
                 ("min_pass_rate", f"{self.min_pass_rate:.4f}"),
                 ("constrained", str(self.constrained).lower())]
        props += [(f"rate_{c}", f"{r.rate:.4f}") for c, r in self.by_category().items()]
        props += [(f"failures_{k}", str(v)) for k, v in self.reasons().items()]
        return props

    def measured(self) -> str:
        """One line for a summary table: the rate, its interval, the categories' rates."""
        categories = ", ".join(f"{c} {r.passed}/{r.total}"
                               for c, r in self.by_category().items())
        return f"{self.overall}" + (f"; {categories}" if categories else "")

    def threshold(self) -> str:
        return f"pass rate >= {self.min_pass_rate:.1%}"

    def table(self) -> str:
        """Measured against threshold, one line per category, then the failure reasons."""
        mode = "constrained" if self.constrained else "unconstrained"
        verdict = "PASS" if self.ok else "FAIL"
        lines = [f"tool calls ({mode}, cases={self.cases}) on {self.model}: {verdict}",
                 f"  {'':<12} {'rate':>7} {'passed':>9}  95% CI",
                 _row("overall", self.overall),
                 *(_row(c, r) for c, r in self.by_category().items()),
                 f"  {'threshold':<12} {self.min_pass_rate:>7.1%}"]
        reasons = self.reasons()
        if reasons:
            lines.append("  failures: " + ", ".join(f"{k} {v}" for k, v in reasons.items()))
        codes = self.codes()
        if codes:
            lines.append("  parser codes: " + ", ".join(f"{k} {v}" for k, v in codes.items()))
        for sample in [s for s in self.samples if not s.passed][:5]:
            lines.append(f"  e.g. {sample.case_id}: {sample.reason}"
                         + (f" ({sample.detail})" if sample.detail else ""))
        return "\n".join(lines)


def _row(name: str, rate: Rate) -> str:
    low, high = rate.interval
    return (f"  {name:<12} {rate.rate:>7.1%} {rate.passed:>4}/{rate.total:<4}"
            f"  {low:.1%}-{high:.1%}")

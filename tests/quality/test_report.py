"""Pass rates: Wilson intervals against published values, aggregation, the verdict table."""

from __future__ import annotations

import pytest

from owllm.quality import Rate, Sample, ToolCallReport, wilson_interval


@pytest.mark.parametrize(("passed", "total", "low", "high"), [
    # Reference values: Newcombe (1998), "Two-sided confidence intervals for the single
    # proportion", table I (Wilson score method, no continuity correction).
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
    (29, 29, 0.8830, 1.0),
    (5, 10, 0.2366, 0.7634),
])
def test_wilson_matches_published_values(passed: int, total: int, low: float,
                                         high: float) -> None:
    got = wilson_interval(passed, total)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_edges() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(1 - high)  # symmetric at one half
    narrow = wilson_interval(500, 1000)
    assert narrow[1] - narrow[0] < high - low  # more samples, narrower
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def sample(i: int, category: str, reason: str, code: str | None = None,
           tokens: int | None = 10) -> Sample:
    return Sample(f"c{i}", category, reason, code=code, detail="d", completion_tokens=tokens)


def report(min_rate: float) -> ToolCallReport:
    samples = [sample(i, "simple", "pass") for i in range(8)] + [
        sample(8, "simple", "wrong_args", "type_error"),
        sample(9, "multiple", "pass"),
        sample(10, "multiple", "wrong_tool", "unknown_tool"),
        sample(11, "irrelevance", "unexpected_call"),
        sample(12, "parallel", "runaway", tokens=128),
        sample(13, "parallel", "wrong_args"),
    ]
    return ToolCallReport("http://127.0.0.1:1", "m", False, "builtin", tuple(samples),
                          min_pass_rate=min_rate, seconds=1.5)


def test_aggregation() -> None:
    r = report(0.5)
    assert (r.overall.passed, r.overall.total) == (9, 14)
    assert r.rate == pytest.approx(9 / 14)
    assert r.interval == wilson_interval(9, 14)
    cats = r.by_category()
    assert list(cats) == ["simple", "multiple", "parallel", "irrelevance"]
    assert (cats["simple"].passed, cats["simple"].total) == (8, 9)
    assert cats["parallel"].rate == 0.0
    assert r.reasons() == {"wrong_args": 2, "runaway": 1, "unexpected_call": 1,
                           "wrong_tool": 1}
    assert r.reasons("parallel") == {"runaway": 1, "wrong_args": 1}
    assert r.codes() == {"type_error": 1, "unknown_tool": 1}
    data = r.to_dict()
    assert data["pass_rate"] == round(9 / 14, 4) and data["samples"] == 14
    assert data["ci95"] == [round(x, 4) for x in wilson_interval(9, 14)]
    assert data["categories"]["multiple"]["reasons"] == {"wrong_tool": 1}
    assert data["runaway_tokens"] == [128]
    assert len(data["sample_results"]) == 14
    assert "sample_results" not in r.to_dict(samples=False)


def test_verdict_and_table() -> None:
    passing, failing = report(0.6), report(0.9)
    assert passing.ok and not failing.ok
    table = failing.table()
    assert "FAIL" in table.splitlines()[0]
    assert "threshold      90.0%" in table
    assert "overall        64.3%    9/14" in table
    assert "failures: wrong_args 2" in table
    assert "e.g. c8: wrong_args (d)" in table
    assert "PASS" in passing.table().splitlines()[0]
    empty = ToolCallReport("u", "m", True, "x", (), min_pass_rate=0.0)
    assert not empty.ok  # no samples never passes a gate
    assert str(Rate(1, 4)).startswith("25.0% (1/4, 95% CI")


def test_junit_properties() -> None:
    props = dict(report(0.9).junit_properties())
    assert props["pass_rate"] == f"{9 / 14:.4f}" and props["samples"] == "14"
    assert props["pass_rate_low"] == f"{wilson_interval(9, 14)[0]:.4f}"
    assert props["rate_simple"] == f"{8 / 9:.4f}" and props["failures_runaway"] == "1"
    assert props["constrained"] == "false"

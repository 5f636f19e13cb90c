"""The latency gate: how long the server took to start, how long the first token takes, how
fast tokens come after it.

* ``startup_s`` comes from the server's StateStore record (the manager measured the launch
  until ready, or the readiness ladder of an endpoint it attached to); a row without one is
  reported as not measured, never guessed.
* ``first_token_s`` and ``tokens_per_s`` come from one streamed greedy generation of a fixed
  prompt (``tokens`` long): the time to the first content chunk, then the decode rate of the
  tokens after it (``(tokens - 1) / (total - first)``), so a slow prefill does not hide in
  the rate and a fast one does not inflate it.  A model that stops before ``tokens`` (EOS)
  is timed on what it generated; the token count is reported beside the rate.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from owllm import httpclient
from owllm.checks import LatencyCheck
from owllm.errors import OwllmError

PROMPT = "Write a long story about a lighthouse keeper and the sea."


@dataclass(frozen=True)
class LatencyReport:
    """What was measured and the limits it is held to (a limit of None is not checked)."""

    model: str
    check: LatencyCheck
    startup_s: float | None
    first_token_s: float | None
    tokens_per_s: float | None
    completion_tokens: int = 0
    error: str = ""

    def failures(self) -> list[str]:
        """One line per limit that was missed (or could not be measured)."""
        out = []
        if self.error:
            out.append(f"generation failed: {self.error}")
        limits = (("startup_s", self.startup_s, self.check.max_startup_s, "<="),
                  ("first_token_s", self.first_token_s, self.check.max_first_token_s, "<="),
                  ("tokens_per_s", self.tokens_per_s, self.check.min_tokens_per_s, ">="))
        for name, value, limit, op in limits:
            if limit is None:
                continue
            if value is None:
                out.append(f"{name} was not measured (limit {op} {limit})")
            elif (value > limit) if op == "<=" else (value < limit):
                out.append(f"{name} {value:g} is not {op} {limit:g}")
        return out

    @property
    def ok(self) -> bool:
        return not self.failures()

    def measured(self) -> str:
        return (f"startup {_fmt(self.startup_s, 's')}, first token "
                f"{_fmt(self.first_token_s, 's')}, {_fmt(self.tokens_per_s, 'tok/s')} "
                f"over {self.completion_tokens} tokens")

    def threshold(self) -> str:
        parts = [f"startup <= {self.check.max_startup_s:g} s"
                 if self.check.max_startup_s is not None else "",
                 f"first token <= {self.check.max_first_token_s:g} s"
                 if self.check.max_first_token_s is not None else "",
                 f">= {self.check.min_tokens_per_s:g} tok/s"
                 if self.check.min_tokens_per_s is not None else ""]
        return ", ".join(p for p in parts if p) or "(report only)"

    def table(self) -> str:
        rows = [("startup_s", self.startup_s, self.check.max_startup_s, "<="),
                ("first_token_s", self.first_token_s, self.check.max_first_token_s, "<="),
                ("tokens_per_s", self.tokens_per_s, self.check.min_tokens_per_s, ">=")]
        lines = [f"latency on {self.model}: {'PASS' if self.ok else 'FAIL'}",
                 f"  {'':<14} {'measured':>10}  threshold"]
        for name, value, limit, op in rows:
            shown = "-" if value is None else f"{value:.3f}"
            lines.append(f"  {name:<14} {shown:>10}  "
                         + (f"{op} {limit:g}" if limit is not None else "(not checked)"))
        lines.append(f"  tokens generated: {self.completion_tokens} of {self.check.tokens}")
        lines += [f"  {line}" for line in self.failures()]
        return "\n".join(lines)

    def junit_properties(self) -> list[tuple[str, str]]:
        props = [(name, f"{value:.4f}") for name, value in (
            ("startup_s", self.startup_s), ("first_token_s", self.first_token_s),
            ("tokens_per_s", self.tokens_per_s)) if value is not None]
        props.append(("completion_tokens", str(self.completion_tokens)))
        props += [(name, f"{value:g}") for name, value in (
            ("max_startup_s", self.check.max_startup_s),
            ("max_first_token_s", self.check.max_first_token_s),
            ("min_tokens_per_s", self.check.min_tokens_per_s)) if value is not None]
        return props


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "not measured"
    return f"{value:.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}"


def stream_timing(root: str, model: str, chat: bool, tokens: int,
                  headers: Mapping[str, str] | None = None,
                  timeout: float = 120.0) -> tuple[float, float, int]:
    """(seconds to the first content chunk, total seconds, completion tokens) of one
    streamed greedy generation of :data:`PROMPT`."""
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body: dict[str, Any] = ({"messages": [{"role": "user", "content": PROMPT}]} if chat
                            else {"prompt": PROMPT})
    body.update(model=model, max_tokens=tokens, temperature=0, stream=True,
                stream_options={"include_usage": True})
    first: float | None = None
    chunks, usage = 0, None
    started = time.perf_counter()
    with httpclient.stream("POST", root + path, json=body, timeout=timeout,
                           headers=dict(headers or {})) as response:
        if response.status_code != 200:
            response.read()
            raise OwllmError(f"{path} answered {response.status_code}: "
                             f"{response.text[:300]}")
        for line in response.iter_lines():
            data = line[5:].strip() if line.startswith("data:") else ""
            if not data or data == "[DONE]":
                continue
            chunk = json.loads(data)
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content") or choice.get("text"):
                    first = first if first is not None else time.perf_counter() - started
                    chunks += 1
    total = time.perf_counter() - started
    count = (usage or {}).get("completion_tokens") or chunks
    return (first if first is not None else total), total, int(count)


def measure_latency(row: Mapping[str, Any], check: LatencyCheck, *, chat: bool = True,
                    model_id: str | None = None) -> LatencyReport:
    """Measure a running server (its StateStore row) against ``check``."""
    extra = row.get("extra") or {}
    startup = extra.get("startup_s")
    startup = float(startup) if isinstance(startup, (int, float)) else None
    name = model_id or str(row.get("model_id"))
    try:
        first, total, count = stream_timing(
            str(row["url"]).rstrip("/"), httpclient.served_model(dict(row)), chat,
            check.tokens, headers=httpclient.row_headers(dict(row)),
            timeout=max(float(extra.get("timeout_s") or 0), 120.0))
    except (OwllmError, httpx.HTTPError, OSError, ValueError) as exc:
        return LatencyReport(name, check, startup, None, None, 0, str(exc)[:300])
    rate = (count - 1) / (total - first) if count > 1 and total > first else None
    return LatencyReport(name, check, startup, round(first, 4),
                         round(rate, 2) if rate is not None else None, count)

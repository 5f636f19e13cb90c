"""Send tool-call cases to any OpenAI-compatible endpoint and score the replies.

    report = run_tool_calls(Endpoint("http://127.0.0.1:8000", "my-model"),
                            ToolCallSettings(cases="builtin", samples=40, min_pass_rate=0.9))
    report.ok, report.rate, report.interval, report.by_category(), report.table()

Each case becomes one chat request: the backend's tool prompt template (``template``: a
backend name, or a template string with ``{tools}`` and ``{prompt}``) filled with the case's
tools and prompt, as the user message; greedy by default (temperature 0, fixed ``seed``).
``constrained=True`` adds ``response_format`` of type ``json_schema`` with the call envelope
of the offered tools (an array of them for parallel cases), so a run shows what constrained
decoding buys on a model; under it an irrelevance case cannot pass (the schema forces a call).
Requests go out concurrently (at most ``concurrency`` at once); only transport errors
(connection refused or reset, timeouts) are retried, never an HTTP answer.  No pytest here: a
gate, a CLI command or a script calls this the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import httpx

from owllm import httpclient
from owllm.errors import UsageError
from owllm.quality.cases import CATEGORIES, Case, load_cases, select
from owllm.quality.report import Sample, ToolCallReport
from owllm.quality.scoring import score
from owllm.tools.prompts import render_tools, template_for, tool_call_response_schema

TEXT_LIMIT = 2000  #: characters of each reply kept in a sample


@dataclass(frozen=True)
class Endpoint:
    """Where to send: the server's root URL (a trailing ``/v1`` is accepted), the model name
    it serves, and headers (an ``Authorization`` for a gateway)."""

    base_url: str
    model: str
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def root(self) -> str:
        url = self.base_url.rstrip("/")
        return url[:-3] if url.endswith("/v1") else url


@dataclass(frozen=True)
class ToolCallSettings:
    """What to run and how; the names match the YAML ``checks: tool_calls`` contract
    (``cases``, ``min_pass_rate``, ``samples``, ``constrained``)."""

    cases: str = "builtin"
    samples: int | None = None
    constrained: bool = False
    min_pass_rate: float = 0.0
    template: str = "transformers"
    seed: int = 0
    temperature: float = 0.0
    max_tokens: int = 128
    concurrency: int = 4
    retries: int = 2
    timeout: float = 120.0
    categories: tuple[str, ...] | None = None  # only these categories (None: all)

    def __post_init__(self) -> None:
        problems = []
        if self.samples is not None and self.samples < 1:
            problems.append(f"samples must be at least 1, not {self.samples}")
        if not 0.0 <= self.min_pass_rate <= 1.0:
            problems.append(f"min_pass_rate must be within 0..1, not {self.min_pass_rate}")
        if self.concurrency < 1 or self.retries < 0 or self.max_tokens < 1:
            problems.append("concurrency and max_tokens must be ≥ 1, retries ≥ 0")
        unknown = sorted(set(self.categories or ()) - set(CATEGORIES))
        if unknown:
            problems.append(f"unknown category {unknown[0]!r} (known: {', '.join(CATEGORIES)})")
        if problems:
            raise UsageError("; ".join(problems))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "tool_calls"
                  ) -> ToolCallSettings:
        """Settings from a mapping (a YAML ``checks: tool_calls`` block); an unknown key or a
        value of the wrong type is a UsageError naming ``where`` and the key."""
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UsageError(f"{where}: unknown key {unknown[0]!r}",
                             hint=f"known: {', '.join(sorted(known))}")
        expected = {"cases": (str,), "template": (str,), "constrained": (bool,),
                    "samples": (int, type(None)), "min_pass_rate": (int, float),
                    "temperature": (int, float), "timeout": (int, float),
                    "categories": (list, tuple, type(None))}
        for key, value in values.items():
            types = expected.get(key, (int,))
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise UsageError(f"{where}.{key}: {value!r} is not "
                                 f"{' or '.join(t.__name__ for t in types)}")
        values = dict(values)
        if values.get("categories") is not None:
            values["categories"] = tuple(values["categories"])
        return cls(**values)

    def prompt_template(self) -> str:
        if "{prompt}" in self.template:
            return self.template
        return template_for(self.template)


def request_body(case: Case, endpoint: Endpoint, settings: ToolCallSettings,
                 template: str | None = None) -> dict[str, Any]:
    """The chat-completions body sent for ``case``."""
    template = template if template is not None else settings.prompt_template()
    prompt = template.format(tools=render_tools(case.tools), prompt=case.prompt)
    body: dict[str, Any] = {"model": endpoint.model,
                            "messages": [{"role": "user", "content": prompt}],
                            "max_tokens": settings.max_tokens,
                            "temperature": settings.temperature, "seed": settings.seed}
    if settings.constrained:
        schema = tool_call_response_schema(case.tools)
        if case.category == "parallel":
            schema = {"anyOf": [*schema["anyOf"], {"type": "array", "minItems": 1,
                                                   "items": {"anyOf": schema["anyOf"]}}]}
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "tool_call", "schema": schema, "strict": True}}
    return body


def reply_text(message: Mapping[str, Any]) -> str:
    """The model's output as envelope text: native OpenAI ``tool_calls`` map back to it."""
    calls = message.get("tool_calls") or []
    if calls:
        envelopes = []
        for i, call in enumerate(calls):
            function = call.get("function") or {}
            try:
                args = json.loads(function.get("arguments") or "{}")
            except ValueError:
                args = function.get("arguments")
            envelopes.append({"tool": function.get("name"), "args": args,
                              "id": call.get("id") or f"call_{i}"})
        return json.dumps(envelopes[0] if len(envelopes) == 1 else envelopes)
    return str(message.get("content") or "")


def _send(client: httpx.Client, case: Case, body: dict[str, Any],
          settings: ToolCallSettings) -> Sample:
    started = time.perf_counter()
    attempts = 0
    while True:
        attempts += 1
        try:
            response = client.post("/v1/chat/completions", json=body)
            break
        except httpx.TransportError as exc:
            if attempts > settings.retries:
                return Sample(case.id, case.category, "request_failed",
                              detail=f"{type(exc).__name__} after {attempts} attempt(s)",
                              seconds=time.perf_counter() - started, attempts=attempts)
            time.sleep(min(2.0, 0.25 * 2 ** attempts))
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        return Sample(case.id, case.category, "request_failed",
                      detail=f"HTTP {response.status_code}: {response.text[:200]}",
                      seconds=seconds, attempts=attempts)
    try:
        data = response.json()
        choice = data["choices"][0]
        text = reply_text(choice.get("message") or {})
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return Sample(case.id, case.category, "request_failed",
                      detail="the answer is not a chat completion", seconds=seconds,
                      attempts=attempts)
    tokens = (data.get("usage") or {}).get("completion_tokens")
    tokens = tokens if isinstance(tokens, int) else None
    finish = choice.get("finish_reason")
    verdict = score(text, case, finish_reason=finish if isinstance(finish, str) else None,
                    completion_tokens=tokens, max_tokens=settings.max_tokens)
    return Sample(case.id, case.category, verdict.reason, verdict.code, verdict.path,
                  verdict.detail, text[:TEXT_LIMIT], finish, tokens, seconds, attempts)


def run_cases(endpoint: Endpoint, cases: Sequence[Case], settings: ToolCallSettings,
              *, label: str = "") -> ToolCallReport:
    """Send ``cases`` and score them; samples come back in the cases' order."""
    if not cases:
        raise UsageError("no tool-call cases to run")
    template = settings.prompt_template()
    started = time.perf_counter()
    with httpclient.client(endpoint.root, headers=endpoint.headers,
                           timeout=settings.timeout) as client, \
            ThreadPoolExecutor(max_workers=settings.concurrency,
                               thread_name_prefix="owllm-quality") as pool:
        samples = list(pool.map(
            lambda case: _send(client, case, request_body(case, endpoint, settings, template),
                               settings), cases))
    return ToolCallReport(
        base_url=httpclient.safe_url(endpoint.root), model=endpoint.model,
        constrained=settings.constrained, cases=label or settings.cases,
        samples=tuple(samples), min_pass_rate=settings.min_pass_rate,
        seconds=time.perf_counter() - started, settings=asdict(settings))


def run_tool_calls(endpoint: Endpoint, settings: ToolCallSettings | None = None
                   ) -> ToolCallReport:
    """Load ``settings.cases`` (``"builtin"`` or a JSONL path), pick ``settings.samples`` of
    them (spread over the categories, by ``seed``), send and score them."""
    settings = settings or ToolCallSettings()
    cases = load_cases(settings.cases)
    if settings.categories:
        cases = [c for c in cases if c.category in settings.categories]
        if not cases:
            raise UsageError(f"no case of {settings.cases} is in the categories "
                             f"{', '.join(settings.categories)}")
    cases = select(cases, settings.samples, settings.seed)
    return run_cases(endpoint, cases, settings)

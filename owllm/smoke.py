"""The checks the guide names, as plain result dicts: ``env_test``, ``model_smoke`` (and
``tools_smoke`` in :mod:`owllm.tools.smoke`).  The CLI prints them as JSON and the pytest
plugin asserts on them, so both share one implementation.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from owllm.backends import get_backend
from owllm.envs import EnvRegistry
from owllm.errors import EnvError, OwllmError
from owllm.servers.manager import LLMServerManager, probe_health
from owllm.servers.ports import LIVE_STATUSES

PASS, FAIL = "PASS", "FAIL"
SMOKE_PROMPT = "Say hello in one short sentence."


def env_test(registry: EnvRegistry, key: str) -> dict[str, Any]:
    """Build the env if needed, run its health probe; the guide's ``env test`` JSON."""
    spec = registry.spec(key)  # unknown key: UsageError listing the known keys
    try:
        registry.ensure_env(key, spec=spec)
    except EnvError as exc:
        return {"env_key": key, "status": FAIL, "python_path": None, "torch_version": None,
                "cuda_available": None, "errors": [{"module": "<build>", "error": exc.message}]}
    result = registry.probe(key, spec)
    if result["status"] != PASS:
        registry.mark_failed(key, "; ".join(f"{e['module']}: {e['error']}"
                                            for e in result["errors"]))
    return {k: v for k, v in result.items() if k != "packages"}


def _error(stage: str, exc: BaseException) -> dict[str, str]:
    return {"stage": stage, "type": type(exc).__name__, "message": str(exc)[:4000]}


def generate_stream(url: str, model_id: str, model_type: str, max_tokens: int,
                    timeout: float = 120.0) -> dict[str, Any]:
    """One streamed generation; returns text, token count, first-token and total seconds."""
    if model_type == "instruct":
        path = "/v1/chat/completions"
        body: dict[str, Any] = {"messages": [{"role": "user", "content": SMOKE_PROMPT}]}
    else:
        path, body = "/v1/completions", {"prompt": "Once upon a time"}
    body.update(model=model_id, max_tokens=max_tokens, temperature=0, stream=True,
                stream_options={"include_usage": True})
    text, chunks, usage = [], 0, None
    first: float | None = None
    start = time.perf_counter()
    with httpx.stream("POST", url + path, json=body, timeout=timeout) as response:
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
                piece = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
                if piece:
                    first = first if first is not None else time.perf_counter() - start
                    text.append(piece)
                    chunks += 1
    total = time.perf_counter() - start
    tokens = (usage or {}).get("completion_tokens") or chunks
    return {"text": "".join(text), "completion_tokens": tokens,
            "first_token_s": round(first if first is not None else total, 4),
            "total_s": round(total, 4)}


def model_smoke(manager: LLMServerManager, model_id: str, keep: bool = False) -> dict[str, Any]:
    """Start (or reuse) the model's server, check health, generate; the guide's JSON."""
    model = manager.config.model(model_id)  # unknown id: UsageError
    result: dict[str, Any] = {
        "model_id": model_id, "status": FAIL, "backend": model.backend,
        "server_started": False, "health_ok": False, "generate_ok": False, "errors": [],
        "env_key": None, "port": None, "startup_s": None, "first_token_s": None,
        "tokens_per_s": None, "capabilities": get_backend(model.backend).capabilities.to_dict(),
    }
    before = manager.reconcile(model_id)
    was_running = bool(before and before["status"] in LIVE_STATUSES and before.get("healthy"))
    started = time.perf_counter()
    try:
        row = manager.start_server(model_id)
    except OwllmError as exc:
        result["errors"].append(_error("start", exc))
        return result
    result.update(server_started=True, env_key=row.get("env_key"), port=row["port"],
                  startup_s=0.0 if was_running else round(time.perf_counter() - started, 3),
                  reused_running_server=was_running)
    try:
        result["health_ok"] = probe_health(row["url"])
        if not result["health_ok"]:
            result["errors"].append({"stage": "health", "type": "HealthCheckFailed",
                                     "message": f"{row['url']}/health did not answer 200"})
        gen = generate_stream(row["url"], model_id, model.model_type,
                              model.generation.max_tokens)
        result["generate_ok"] = gen["completion_tokens"] > 0
        if not result["generate_ok"]:
            result["errors"].append({"stage": "generate", "type": "EmptyGeneration",
                                     "message": "the server generated no tokens"})
        result["first_token_s"] = gen["first_token_s"]
        result["tokens_per_s"] = round(gen["completion_tokens"] / max(gen["total_s"], 1e-9), 2)
        result["sample"] = gen["text"][:200]
    except (OwllmError, httpx.HTTPError, ValueError) as exc:
        result["errors"].append(_error("generate", exc))
    finally:
        if not keep and not was_running:
            manager.stop_server(model_id)
    if result["errors"]:
        result["log_tail"] = manager.logs(model_id, 20)
    else:
        result["status"] = PASS
    return result

"""Our transformers server against bare transformers, measured in the same run on the demo model.

* start-to-healthy: launching ``owllm.inenv.transformers_app`` until ``/health`` is 200,
  against a bare script that imports torch + transformers, loads the same model and runs one
  forward pass;
* tokens/s: greedy ``/v1/completions`` through HTTP against in-process ``model.generate`` with
  the same prompt, token budget, greedy decoding, warm-up and token counting: both sides come
  from ``bench/_measure.py``, which ``bench/backends.py`` shares;
* constrained decoding: seconds per token with a ``json_schema`` response format against free
  decoding, both through the server.

``--json`` prints one object with ``server_over_engine``, ``start_over_bare`` and
``constrained_over_free``.

    python bench/serve.py [--tokens 64] [--repeats 3] [--model-dir DIR] [--env-key KEY] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from _measure import PROMPT, completion_body, engine_rate, server_rate

from owllm.envs import EnvRegistry
from owllm.envs.runner import inenv_argv, run_in_env

SCHEMA = {"type": "object", "properties": {
    "answer": {"type": "integer", "minimum": 0, "maximum": 999},
    "unit": {"enum": ["cm", "kg", "s"]}, "note": {"type": "string", "maxLength": 40}},
    "required": ["answer", "unit", "note"], "additionalProperties": False}

BARE_LOAD = """
import sys, torch, transformers
tok = transformers.AutoTokenizer.from_pretrained(sys.argv[1])
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
with torch.inference_mode():
    model(**tok("Hello", return_tensors="pt"))
"""

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(python: str, model_dir: Path, work: Path) -> tuple[subprocess.Popen[bytes],
                                                                      str, float]:
    """Launch the server; return it, its URL and the seconds until /health was 200."""
    config = work / "server.json"
    config.write_text(json.dumps({
        "model_id": "bench", "model_path": str(model_dir), "model_type": "instruct",
        "system_prompt": "", "adapter_dir": None, "use_4bit": False, "device": "cpu",
        "dtype": "float32", "generation": {"max_tokens": 64, "temperature": 0.0, "top_p": 1.0},
        "max_model_len": 1024}))
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen(inenv_argv(python, "transformers_app", "--config-json",
                                          str(config), "--port", str(port)),
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    while True:
        if process.poll() is not None:
            raise SystemExit(f"server exited {process.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url, time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.02)


def stop(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--home", default=str(Path.home() / ".cache" / "owllm-tests" / "home"))
    parser.add_argument("--env-key", default="torch-cpu-transformers",
                        help="the env to run in (the tests' cache holds "
                             "torch-cpu-transformers-bnb-peft)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args()
    if args.tokens < 1 or args.repeats < 1:
        parser.error("--tokens and --repeats must be >= 1")
    python = str(EnvRegistry(home=args.home).ensure_env(args.env_key)
                 .python_executable)
    with tempfile.TemporaryDirectory(prefix="owllm-bench-") as tmp:
        work = Path(tmp)
        model_dir = args.model_dir or work / "model"
        run_in_env(python, "demo_model", ["--out", str(model_dir)])
        prompt = PROMPT

        loads = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            subprocess.run([python, "-c", BARE_LOAD, str(model_dir)], check=True,
                           capture_output=True)
            loads.append(time.perf_counter() - start)
        bare_rate, bare_tokens = engine_rate("transformers", python, str(model_dir),
                                             args.tokens, args.repeats, work)

        readies = []
        for _ in range(args.repeats - 1):
            process, _, ready = start_server(python, model_dir, work)
            readies.append(ready)
            stop(process)
        process, url, ready = start_server(python, model_dir, work)
        readies.append(ready)
        try:
            served, free_tokens = server_rate(
                url, completion_body("transformers", "bench", args.tokens), args.repeats)
            schema_body = {"messages": [{"role": "user", "content": prompt}],
                           "max_tokens": args.tokens, "temperature": 0,
                           "response_format": {"type": "json_schema", "json_schema": {
                               "name": "b", "schema": SCHEMA}}}
            plain_body = {k: v for k, v in schema_body.items() if k != "response_format"}
            chat = "/v1/chat/completions"  # seconds per token: the inverse of the rate
            free_rate, free_chat_tokens = server_rate(url, plain_body, args.repeats, chat)
            chat_free = 1.0 / free_rate
            c_rate, c_tokens = server_rate(url, schema_body, args.repeats, chat)
            constrained = 1.0 / c_rate
        finally:
            stop(process)

    load, ready = statistics.median(loads), statistics.median(readies)
    if args.json:
        print(json.dumps({
            "server_over_engine": served / bare_rate, "start_over_bare": ready / load,
            "constrained_over_free": constrained / chat_free, "server_tok_s": served,
            "engine_tok_s": bare_rate, "server_tokens": free_tokens, "engine_tokens": bare_tokens,
            "ready_s": ready, "bare_load_s": load, "constrained_ms_per_token": constrained * 1000,
            "free_ms_per_token": chat_free * 1000, "constrained_tokens": c_tokens,
            "free_chat_tokens": free_chat_tokens}))
        return
    print(f"start-to-healthy   server {ready:7.2f} s   bare load+forward {load:7.2f} s   "
          f"ratio {ready / load:5.2f}x")
    print(f"tokens/s           server {served:7.1f}     in-process generate "
          f"{bare_rate:7.1f}     ratio {served / bare_rate:5.2f}x  "
          f"({free_tokens}/{bare_tokens} tokens, HTTP included)")
    print(f"s/token            constrained {constrained * 1000:6.2f} ms ({c_tokens} tokens)   "
          f"free {chat_free * 1000:6.2f} ms ({free_chat_tokens} tokens)   "
          f"ratio {constrained / chat_free:5.2f}x")


if __name__ == "__main__":
    main()

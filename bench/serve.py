"""Serving overhead of the transformers backend, as ratios measured in one run:

* start → healthy of our server against a bare script that imports torch + transformers and
  loads the same model (the floor any server pays);
* tokens/s through the server (HTTP, greedy, same max_tokens) against in-process generation
  with the same engine settings;
* constrained (json_schema) against free decoding, per generated token.

Run: python bench/serve.py   (uses the demo model, in a temp home)
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from owllm.backends.transformers import materialize_demo
from owllm.envs import EnvRegistry
from owllm.paths import Home
from owllm.servers.manager import LLMServerManager

MAX_TOKENS = 64
ROUNDS = 5
BARE = """
import time, sys
t = time.perf_counter()
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
ids = tok("Hello", return_tensors="pt").input_ids
with torch.inference_mode():
    model(input_ids=ids)
    load = time.perf_counter() - t
    t = time.perf_counter()
    n = 0
    for _ in range({rounds}):
        out = model.generate(ids, max_new_tokens={max_tokens}, min_new_tokens={max_tokens},
                             do_sample=False)
        n += out.shape[1] - ids.shape[1]
    print(load, n / (time.perf_counter() - t))
"""
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["items"],
          "properties": {"items": {"type": "array", "items": {"type": "integer"}}}}


def tokens_per_s(url: str, constrained: bool) -> float:
    body = {"prompt": "Hello", "max_tokens": MAX_TOKENS, "temperature": 0}
    if constrained:
        body = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": MAX_TOKENS,
                "temperature": 0, "response_format": {"type": "json_schema", "json_schema": {
                    "name": "x", "schema": SCHEMA}}}
    path = "/v1/chat/completions" if constrained else "/v1/completions"
    tokens, start = 0, time.perf_counter()
    for _ in range(ROUNDS):
        tokens += httpx.post(url + path, json=body, timeout=300).json()["usage"][
            "completion_tokens"]
    return tokens / (time.perf_counter() - start)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        home = Home(root)
        env = EnvRegistry(home).ensure_env("torch-cpu-transformers")
        model_dir = materialize_demo("tiny-llama", home, env.python_executable)
        config = root / "configs" / "llm_backends.yaml"
        config.parent.mkdir()
        config.write_text("models:\n  demo:\n    base_model: demo://tiny-llama\n"
                          "    device: cpu\n")
        bare = subprocess.run([str(env.python_executable), "-c",
                               BARE.format(rounds=ROUNDS, max_tokens=MAX_TOKENS),
                               str(model_dir)], capture_output=True, text=True, check=True)
        bare_load, bare_tps = map(float, bare.stdout.split())
        manager = LLMServerManager(config, home=home)
        start = time.perf_counter()
        row = manager.start_server("demo")
        server_start = time.perf_counter() - start
        try:
            tokens_per_s(row["url"], False)  # warm the HTTP path
            free = tokens_per_s(row["url"], False)
            constrained = tokens_per_s(row["url"], True)
        finally:
            manager.stop_all()
    print(f"start→healthy: server {server_start:.2f}s, bare load {bare_load:.2f}s, "
          f"ratio {server_start / bare_load:.2f}")
    print(f"tokens/s: server {free:.0f}, in-process generate {bare_tps:.0f}, "
          f"ratio {free / bare_tps:.2f}")
    print(f"per-token: constrained {constrained:.0f} tok/s vs free {free:.0f} tok/s, "
          f"ratio {constrained / free:.2f}")


if __name__ == "__main__":
    main()

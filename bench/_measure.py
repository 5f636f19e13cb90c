"""One way to measure a server against its engine, shared by ``bench/serve.py`` and
``bench/backends.py`` so the two cannot disagree about the same figure (issue #18: they read
0.77x and 1.26x for the transformers server).

Both sides use the same prompt, the same token budget, greedy decoding, one warm-up run
before the timed ones, and divide by the tokens really produced (the engine's output length,
the server's ``usage.completion_tokens``); the figure is the median of ``repeats`` runs.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

PROMPT = "Once upon a time"
MARK = "BENCH_JSON "

# Each engine script: argv = model path, prompt, max_tokens, repeats; defines run(k) -> tokens.
ENGINES = {"transformers": """
import json, sys, time, torch, transformers
path, prompt, n, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tok = transformers.AutoTokenizer.from_pretrained(path)
model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
ids = tok(prompt, return_tensors="pt")
def run(k):
    out = model.generate(**ids, max_new_tokens=k, min_new_tokens=k, do_sample=False,
                         pad_token_id=tok.eos_token_id)
    return out.shape[1] - ids["input_ids"].shape[1]
""", "vllm": """
import json, sys, time
from vllm import LLM, SamplingParams
path, prompt, n, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def run(k):
    params = SamplingParams(temperature=0, max_tokens=k, ignore_eos=True)
    return len(llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids)
""", "llamacpp": """
import json, sys, time
from llama_cpp import Llama
path, prompt, n, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def run(k):
    return llm(prompt, max_tokens=k, temperature=0.0)["usage"]["completion_tokens"]
"""}
# vLLM takes the --dtype its server got (argv[5]; "auto" when none): left to itself on a
# float32 model it downcasts to bfloat16, which the server may not run on this CPU.
LOADERS = {"transformers": "", "vllm": "llm = LLM(model=path, max_model_len=1024, "
           "enforce_eager=True,\n        dtype=sys.argv[5] if len(sys.argv) > 5 else 'auto')",
           "llamacpp": "llm = Llama(model_path=path, n_ctx=1024, verbose=False)"}
TIMED = """
def main():
    global llm
    {loader}
    run(2)  # warm-up, as the server side gets one warm-up request
    rates, counts = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        count = run(n)
        rates.append(count / (time.perf_counter() - start))
        counts.append(count)
    print({mark!r} + json.dumps({{"rates": rates, "tokens": counts}}), flush=True)

if __name__ == "__main__":
    main()
"""


def engine_rate(name: str, python: Path | str, model_path: str, max_tokens: int, repeats: int,
                work: Path, dtype: str | None = None) -> tuple[float, int]:
    """Median in-process tokens/s of the bare engine, and the tokens of its last run
    (``dtype``: vLLM's ``--dtype``, the one its server runs with)."""
    script = work / f"engine_{name}.py"
    script.write_text(ENGINES[name] + TIMED.format(loader=LOADERS[name], mark=MARK))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    done = subprocess.run([str(python), str(script), model_path, PROMPT,
                           str(max_tokens), str(repeats), *([dtype] if dtype else [])],
                          cwd=work, env=env,
                          capture_output=True, text=True, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(MARK)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"in-process {name} engine failed (exit {done.returncode}):\n"
                           f"{(done.stderr or done.stdout)[-2000:]}")
    result = json.loads(lines[-1][len(MARK):])
    return statistics.median(result["rates"]), int(result["tokens"][-1])


def completion_body(name: str, model_id: str, max_tokens: int) -> dict[str, Any]:
    """The server-side request matching the engine scripts: greedy, fixed budget."""
    body: dict[str, Any] = {"model": model_id, "prompt": PROMPT, "max_tokens": max_tokens,
                            "temperature": 0}
    if name == "vllm":
        body["ignore_eos"] = True  # as in the in-process run
    return body


def server_rate(url: str, body: dict[str, Any], repeats: int,
                path: str = "/v1/completions") -> tuple[float, int]:
    """Median tokens/s of ``repeats`` identical requests after one warm-up request, and the
    tokens of the last one.  ``url`` is the server's base URL."""
    rates, tokens = [], 0
    with httpx.Client(timeout=300) as client:
        for i in range(repeats + 1):  # the first request is a warm-up
            start = time.perf_counter()
            response = client.post(url + path, json=body)
            seconds = time.perf_counter() - start
            if response.status_code != 200:
                raise RuntimeError(f"server answered {response.status_code} on {path}: "
                                   f"{response.text[:500]}")
            tokens = int(response.json()["usage"]["completion_tokens"])
            if i:
                rates.append(tokens / seconds)
    return statistics.median(rates), tokens

"""The three backends (transformers, vLLM, llama.cpp) on the same demo model, each measured
against its own bare engine and against the transformers backend, all in the same run.

For each backend, with one OWLLM config holding ``demo://tiny-llama`` three times:

* start: wall seconds of ``LLMServerManager.start_server`` (env lookup, cached weights,
  launch, wait until ready); ready: the manager's own launch-to-ready seconds
  (``extra.startup_s``).  The env and the weights (the GGUF for llama.cpp) are prepared, and
  the bare engine has run once, before the timed start, so only the server start is timed;
* server tok/s: greedy ``/v1/completions`` over HTTP on loopback, fixed prompt and
  ``max_tokens``, median of ``--repeats`` after one warm-up request;
* engine tok/s: the same prompt and budget in-process with the env's python
  (transformers ``model.generate``, ``vllm.LLM.generate``, ``llama_cpp.Llama(...)(...)``).

Tokens/s always divides by the tokens really produced (``usage.completion_tokens``, output
lengths), which can differ between backends (a model may stop at EOS; vLLM runs with
``ignore_eos``).  Reading the ratios: ``server/engine`` below 1.00x is what the HTTP server
costs against its bare engine; ``start/tf`` and ``tok/s/tf`` compare each backend with the
transformers backend (start/tf above 1.00x: slower to start; tok/s/tf above 1.00x: faster).

    python bench/backends.py [--backends transformers,vllm,llamacpp] [--home DIR]
                             [--max-tokens 64] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from owllm.backends import BackendContext, backend_names, get_backend
from owllm.servers.manager import LLMServerManager

PROMPT = "Once upon a time"
MARK = "BENCH_JSON "
MODEL = ('  bench_{name}:\n    base_model: "demo://tiny-llama"\n    backend: {name}\n'
         '    device: cpu\n    max_model_len: 1024\n    startup_timeout_s: 900\n'
         '    generation: {{max_tokens: {tokens}, temperature: 0.0}}\n')

# Each engine script: argv = model path, prompt, max_tokens, repeats; prints MARK + rates.
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
LOADERS = {"transformers": "", "vllm": "llm = LLM(model=path, max_model_len=1024, "
           "enforce_eager=True)", "llamacpp": "llm = Llama(model_path=path, n_ctx=1024, "
           "verbose=False)"}
# The installed backends this bench can measure: those with a bare-engine script above.
BACKENDS = tuple(name for name in backend_names() if name in ENGINES)
TIMED = """
def main():
    global llm
    {loader}
    run(2)
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


def engine_rate(name: str, python: Path, model_path: str, args: argparse.Namespace,
                work: Path) -> tuple[float, int]:
    """Median in-process tokens/s of the bare engine, and the tokens of its last run."""
    script = work / f"engine_{name}.py"
    script.write_text(ENGINES[name] + TIMED.format(loader=LOADERS[name], mark=MARK))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    done = subprocess.run([str(python), str(script), model_path, PROMPT,
                           str(args.max_tokens), str(args.repeats)], cwd=work, env=env,
                          capture_output=True, text=True, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(MARK)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"in-process {name} engine failed (exit {done.returncode}):\n"
                           f"{(done.stderr or done.stdout)[-2000:]}")
    result = json.loads(lines[-1][len(MARK):])
    return statistics.median(result["rates"]), int(result["tokens"][-1])


def server_rate(name: str, url: str, model_id: str,
                args: argparse.Namespace) -> tuple[float, int]:
    """Median tokens/s of greedy /v1/completions over HTTP, and the tokens of the last one."""
    body: dict[str, Any] = {"model": model_id, "prompt": PROMPT, "max_tokens": args.max_tokens,
                            "temperature": 0}
    if name == "vllm":
        body["ignore_eos"] = True  # as in the in-process run
    rates, tokens = [], 0
    with httpx.Client(timeout=300) as client:
        for i in range(args.repeats + 1):  # the first request is a warm-up
            start = time.perf_counter()
            response = client.post(url + "/v1/completions", json=body)
            seconds = time.perf_counter() - start
            if response.status_code != 200:
                raise RuntimeError(f"{name} server answered {response.status_code}: "
                                   f"{response.text[:500]}")
            tokens = int(response.json()["usage"]["completion_tokens"])
            if i:
                rates.append(tokens / seconds)
    return statistics.median(rates), tokens


def measure(manager: LLMServerManager, name: str, args: argparse.Namespace,
            work: Path) -> dict[str, Any]:
    model_id = f"bench_{name}"
    model = manager.config.model(model_id)

    def say(what: str) -> None:
        print(f"[{name}] {what}", file=sys.stderr, flush=True)

    say("preparing env and weights")
    env = manager.registry.get_env_for_model(model)
    ctx = BackendContext(home=manager.home, env=env, base_dir=manager.config.home_relative_base,
                         registry=manager.registry)
    model_path = str(get_backend(name).model_path(model, ctx))
    say("in-process engine")
    engine, engine_tokens = engine_rate(name, env.python_executable, model_path, args, work)
    manager.stop_server(model_id)  # a server left running from an earlier run would not start
    say("starting the server")
    start = time.perf_counter()
    try:
        row = manager.start_server(model_id)
        start_s = time.perf_counter() - start
        say("server throughput")
        server, server_tokens = server_rate(name, row["url"], model_id, args)
    finally:
        manager.stop_server(model_id)
    return {"start_s": start_s, "ready_s": (row.get("extra") or {}).get("startup_s"),
            "server_tok_s": server, "engine_tok_s": engine, "server_tokens": server_tokens,
            "engine_tokens": engine_tokens, "server_vs_engine": server / engine,
            "env_key": env.key, "model_path": model_path}


def table(results: dict[str, dict[str, Any]]) -> str:
    base = results.get("transformers")
    rows = [f"{'backend':<13}{'start s':>9}{'ready s':>9}{'server tok/s':>14}"
            f"{'engine tok/s':>14}{'server/engine':>15}{'start/tf':>10}{'tok/s/tf':>10}"
            f"{'tokens srv/eng':>16}"]
    for name, r in results.items():
        ready = f"{r['ready_s']:9.2f}" if r["ready_s"] is not None else f"{'-':>9}"
        vs_tf = (f"{r['start_vs_tf']:9.2f}x{r['tok_s_vs_tf']:9.2f}x" if base
                 else f"{'-':>10}{'-':>10}")
        rows.append(f"{name:<13}{r['start_s']:9.2f}{ready}{r['server_tok_s']:14.1f}"
                    f"{r['engine_tok_s']:14.1f}{r['server_vs_engine']:14.2f}x{vs_tf}"
                    f"{r['server_tokens']:>10}/{r['engine_tokens']}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--home", default=os.environ.get("OWLLM_HOME") or str(
        Path.home() / ".cache" / "owllm-bench" / "home"))
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args()
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BACKENDS))
    if unknown or not names or args.repeats < 1 or args.max_tokens < 1:
        parser.error(f"--backends takes {','.join(BACKENDS)} (installed backends with a "
                     f"bare-engine script here; got unknown: {unknown}); "
                     "--repeats and --max-tokens must be >= 1")
    wall = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="owllm-bench-backends-") as tmp:
        work = Path(tmp)
        config = work / "configs" / "llm_backends.yaml"
        config.parent.mkdir()
        config.write_text("version: 1\nmodels:\n" + "".join(
            MODEL.format(name=n, tokens=args.max_tokens) for n in names))
        manager = LLMServerManager(config, home=args.home)
        for name in names:
            try:
                results[name] = measure(manager, name, args, work)
            except Exception as exc:  # report it, go on with the other backends
                errors[name] = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
                print(f"[{name}] FAILED: {errors[name]}", file=sys.stderr, flush=True)
    base = results.get("transformers")
    for r in results.values():
        if base:
            r["start_vs_tf"] = r["start_s"] / base["start_s"]
            r["tok_s_vs_tf"] = r["server_tok_s"] / base["server_tok_s"]
    wall = time.perf_counter() - wall
    if args.json:
        print(json.dumps({"prompt": PROMPT, "max_tokens": args.max_tokens,
                          "repeats": args.repeats, "home": args.home, "wall_s": wall,
                          "backends": results, "errors": errors}, indent=2))
    else:
        print(f"demo://tiny-llama, CPU, prompt {PROMPT!r}, max_tokens {args.max_tokens}, "
              f"median of {args.repeats}; home {args.home}")
        if results:
            print(table(results))
        print(f"server/engine: server tok/s over in-process tok/s (HTTP included); "
              f"start/tf, tok/s/tf: against the transformers backend.  wall {wall:.1f}s")
    if errors:
        for name, message in errors.items():
            print(f"error: backend {name} failed: {message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

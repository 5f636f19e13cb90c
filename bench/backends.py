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

``--json`` prints ``{"<backend>": {"server_over_engine": …, "start_s": …, …}, "_run": {…}}``.
Both sides are measured by ``bench/_measure.py``, which ``bench/serve.py`` shares.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _measure import ENGINES, PROMPT, completion_body, engine_rate, server_rate

from owllm.backends import BackendContext, backend_names, get_backend
from owllm.backends.vllm import dtype_choice
from owllm.servers.manager import LLMServerManager

MODEL = ('  bench_{name}:\n    base_model: "demo://tiny-llama"\n    backend: {name}\n'
         '    device: cpu\n    max_model_len: 1024\n    startup_timeout_s: 900\n'
         '    generation: {{max_tokens: {tokens}, temperature: 0.0}}\n')

# The installed backends this bench can measure: those with a bare-engine script in _measure.
BACKENDS = tuple(name for name in backend_names() if name in ENGINES)


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
    dtype = fallback = None
    if name == "vllm":  # the engine runs with the dtype the server is given (see _measure)
        choice = dtype_choice(model, ctx, model.device == "cpu")
        dtype, fallback = choice.value, choice.fallback
        say(f"dtype {dtype} ({choice.reason})")
    say("in-process engine")
    try:
        engine, engine_tokens = engine_rate(name, env.python_executable, model_path,
                                            args.max_tokens, args.repeats, work, dtype)
    except RuntimeError as exc:
        if not fallback:
            raise
        # as the server does when its fast kernels die (SIGILL/SIGSEGV): the safe dtype
        say(f"dtype {dtype} failed in-process ({str(exc).splitlines()[0]}); {fallback}")
        dtype = fallback
        engine, engine_tokens = engine_rate(name, env.python_executable, model_path,
                                            args.max_tokens, args.repeats, work, dtype)
    manager.stop_server(model_id)  # a server left running from an earlier run would not start
    say("starting the server")
    start = time.perf_counter()
    try:
        row = manager.start_server(model_id)
        start_s = time.perf_counter() - start
        say("server throughput")
        server, server_tokens = server_rate(
            row["url"], completion_body(name, model_id, args.max_tokens), args.repeats)
    finally:
        manager.stop_server(model_id)
    return {"start_s": start_s, "ready_s": (row.get("extra") or {}).get("startup_s"),
            "server_tok_s": server, "engine_tok_s": engine, "server_tokens": server_tokens,
            "engine_tokens": engine_tokens, "server_over_engine": server / engine,
            "env_key": env.key, "model_path": model_path, "engine_dtype": dtype,
            "server_kernels": (row.get("extra") or {}).get("kernels")}


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
                    f"{r['engine_tok_s']:14.1f}{r['server_over_engine']:14.2f}x{vs_tf}"
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
        # One key per measured backend (the issue's shape); the run's settings under "_run".
        print(json.dumps({**results, "_run": {
            "prompt": PROMPT, "max_tokens": args.max_tokens, "repeats": args.repeats,
            "home": args.home, "wall_s": wall, "errors": errors}}, indent=2))
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

"""Ray Serve against OWLLM's own server: 32 concurrent chat requests on the demo model.

Three deployments of the same weights, each started by OWLLM's manager in a temporary home
and measured alone (one after the other, so they never compete for the cores):

* ``direct``: ``backend: transformers`` (OWLLM's server, no proxy);
* ``ray1``: ``backend: ray``, one replica, behind Serve's HTTP proxy;
* ``ray2``: ``backend: ray``, two replicas.

Each gets one warm-up request, then ``--requests`` chat completions sent at once (greedy,
``--tokens`` tokens).  Figures: requests/s (requests / wall seconds of the burst) and the
p95 latency of one request.  Ratios: ``ray1_over_direct_*`` is Serve's proxy overhead,
``ray2_over_ray1_*`` is replica scaling (on 2 cores expect little gain: the number is the
point).

``--json`` prints one object with ``ray1_over_direct_rps``, ``ray1_over_direct_p95``,
``ray2_over_ray1_rps``, ``ray2_over_ray1_p95`` and the raw figures per deployment.

    python bench/scale.py [--requests 32] [--tokens 16] [--num-cpus 0.5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from owllm.backends.ray import temp_link
from owllm.envs import EnvRegistry
from owllm.servers.manager import LLMServerManager

DEPLOYMENTS = ("direct", "ray1", "ray2")


def config_text(num_cpus: float, tokens: int) -> str:
    common = (f'base_model: "demo://tiny-llama", device: cpu, '
              f"generation: {{max_tokens: {tokens}, temperature: 0.0}}")
    return textwrap.dedent(f"""\
        models:
          direct: {{backend: transformers, {common}}}
          ray1: {{backend: ray, {common},
                 ray: {{replicas: 1, num_cpus: {num_cpus}, object_store_mb: 100}}}}
          ray2: {{backend: ray, {common},
                 ray: {{replicas: 2, num_cpus: {num_cpus}, object_store_mb: 100}}}}
        """)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def burst(url: str, model_id: str, requests: int, tokens: int) -> dict[str, float]:
    """``requests`` chat completions at once: requests/s of the burst, p50/p95 latency."""
    body = {"model": model_id, "max_tokens": tokens, "temperature": 0,
            "messages": [{"role": "user", "content": "Tell me a story."}]}
    with httpx.Client(timeout=600, trust_env=False,
                      limits=httpx.Limits(max_connections=requests)) as client:
        def one(_: int) -> float:
            start = time.perf_counter()
            response = client.post(url + "/v1/chat/completions", json=body)
            if response.status_code != 200:
                raise RuntimeError(f"{url} answered {response.status_code}: "
                                   f"{response.text[:300]}")
            return time.perf_counter() - start

        one(0)  # warm-up: the first request of a replica is not the figure
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=requests) as pool:
            latencies = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - started
    return {"rps": requests / wall, "p95_s": p95(latencies),
            "p50_s": statistics.median(latencies), "wall_s": wall}


def measure(manager: LLMServerManager, model_id: str, requests: int,
            tokens: int) -> dict[str, float]:
    started = time.perf_counter()
    row = manager.start_server(model_id)
    ready = time.perf_counter() - started
    try:
        return {**burst(row["url"], model_id, requests, tokens), "start_s": ready}
    finally:
        manager.stop_server(model_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--num-cpus", type=float, default=0.5,
                        help="ray.num_cpus of each replica (fractional packs two on a core)")
    parser.add_argument("--env-home", default=str(Path.home() / ".cache" / "owllm-tests" /
                                                  "home"),
                        help="where the envs are built and kept (a warm cache is fast)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args()
    if args.requests < 1 or args.tokens < 1 or args.num_cpus <= 0:
        parser.error("--requests and --tokens must be >= 1, --num-cpus must be > 0")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="owllm-bench-") as tmp:
        config = Path(tmp) / "configs" / "llm_backends.yaml"
        config.parent.mkdir()
        config.write_text(config_text(args.num_cpus, args.tokens))
        registry = EnvRegistry(home=args.env_home, config_path=config)
        manager = LLMServerManager(config, home=Path(tmp) / "home", registry=registry)
        try:
            for name in DEPLOYMENTS:
                results[name] = measure(manager, name, args.requests, args.tokens)
        finally:
            manager.stop_all()
            for name in DEPLOYMENTS[1:]:  # the short links to Ray's folders in the tmp home
                temp_link(manager.home.state_dir / "ray" / name).unlink(missing_ok=True)
    summary = summarize(results, args.requests, args.tokens)
    if args.json:
        print(json.dumps(summary))
        return
    for name in DEPLOYMENTS:
        r = results[name]
        print(f"{name:7s} {r['rps']:6.2f} req/s   p50 {r['p50_s']:6.2f} s   "
              f"p95 {r['p95_s']:6.2f} s   (start {r['start_s']:5.1f} s)", file=sys.stdout)
    for key in RATIOS:
        print(f"{key:22s} {summary[key]:5.2f}x")


RATIOS = ("ray1_over_direct_rps", "ray1_over_direct_p95", "ray2_over_ray1_rps",
          "ray2_over_ray1_p95")


def summarize(results: dict[str, dict[str, float]], requests: int,
              tokens: int) -> dict[str, Any]:
    """The ``--json`` object: the ratios, then the raw figures of each deployment."""
    direct, ray1, ray2 = (results[n] for n in DEPLOYMENTS)
    ratios = (ray1["rps"] / direct["rps"], ray1["p95_s"] / direct["p95_s"],
              ray2["rps"] / ray1["rps"], ray2["p95_s"] / ray1["p95_s"])
    return {**dict(zip(RATIOS, ratios, strict=True)), "requests": requests,
            "tokens": tokens, **{name: results[name] for name in DEPLOYMENTS}}


if __name__ == "__main__":
    main()

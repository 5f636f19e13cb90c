"""The Ray Serve driver of one model (``backend: ray``): the process OWLLM supervises.

In-env module, run with the model env's python (which holds ray[serve] at the host's Ray
version besides the engine's packages)::

    python owllm/inenv/__main__.py ray_serve --config-json FILE

FILE: the transformers server's config (``model_id``, ``model_path``, ... see
``transformers_app``) plus ``ray`` (the model's ``ray:`` options), ``host``/``port`` (where
Serve's HTTP proxy listens on a cluster this process starts), ``temp_dir`` (Ray's session
files), ``stage_dir`` (where the replicas' copy of this package is written) and ``cpus``.

* ``address: local``: ``ray.init(address="local")`` starts a head node owned by this
  process (bounded object store, the host's CPU count, no dashboard, files under
  ``temp_dir``); its processes share this one's fate (Ray's own parent-death signal), and
  a stop shuts them down with the application.
* any other address: this process connects as a driver, deploys, and on SIGTERM deletes
  its application and leaves the cluster running.

Deploy = ``serve.run`` of an application named after the model id at ``route_prefix``;
``serve.run`` returns once Serve reports it RUNNING and raises on DEPLOY_FAILED.  Then the
application's status is watched: transitions are logged (the host's readiness and health
probes go through Serve's HTTP proxy), and DEPLOY_FAILED or a vanished application ends
this process with status 1, which OWLLM's supervisor reports as a crash.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import time
from typing import Any

WATCH_PERIOD_S = 2.0
# Serve application status -> (OWLLM status, healthy), as this driver acts on it: while an
# application is STARTING the host's readiness keeps waiting; RUNNING serves; an UNHEALTHY
# one keeps running (Serve replaces its replicas; the host's probes through the proxy see
# it unhealthy); FAILED (DEPLOY_FAILED) or STOPPED (deleted behind OWLLM's back) ends this
# driver with status 1, which the supervisor records as FAILED during a start, CRASHED after.
SERVE_STATUS: dict[str, tuple[str, bool]] = {
    "NOT_STARTED": ("STARTING", False),
    "DEPLOYING": ("STARTING", False),
    "RUNNING": ("RUNNING", True),
    "UNHEALTHY": ("RUNNING", False),
    "DEPLOY_FAILED": ("FAILED", False),
    "DELETING": ("STOPPED", False),
    "MISSING": ("STOPPED", False),  # no such application (any more)
}


def owllm_status(serve_status: str) -> tuple[str, bool]:
    """OWLLM's (status, healthy) for a Serve application status (an unknown one: running,
    not healthy)."""
    return SERVE_STATUS.get(serve_status.upper(), ("RUNNING", False))


def _log(message: str) -> None:
    print(f"owllm-ray: {message}", flush=True)


def _stop(*_: Any) -> None:
    raise SystemExit(0)  # unwinds serve.run's wait too: the finally below cleans up


def stage_package(stage_dir: str) -> str:
    """A copy of this package's modules under ``<stage_dir>/_owllm_inenv`` for Ray's
    ``py_modules`` (the module name is the folder's): replicas import the deployment and
    the app from it on any node, with no OWLLM installed there."""
    here = os.path.dirname(os.path.abspath(__file__))
    target = os.path.join(stage_dir, "_owllm_inenv")
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target)
    for name in sorted(os.listdir(here)):
        if name.endswith(".py") and name != "__main__.py":
            shutil.copy2(os.path.join(here, name), os.path.join(target, name))
    return target


def runtime_env(cfg: dict[str, Any], package: str) -> dict[str, Any]:
    """The job's runtime env, which Serve passes on to the replicas: this package (a local
    folder only the driver can upload, hence the job's and not the deployment's), this
    env's python where the cluster is not ours (on a cluster this process starts, every
    worker runs this python already), and the guard's settings."""
    env: dict[str, Any] = {"py_modules": [package]}
    if cfg["ray"]["address"] != "local":
        env["py_executable"] = sys.executable
    variables = {k: os.environ[k] for k in ("OWLLM_API_KEY", "OWLLM_ALLOWED_HOSTS",
                                            "OWLLM_MAX_BODY_BYTES") if os.environ.get(k)}
    if variables:
        env["env_vars"] = variables
    return env


def build_app(cfg: dict[str, Any]) -> Any:
    """The Serve application of the configured engine."""
    ray_cfg = cfg["ray"]
    actor = {"num_cpus": ray_cfg["num_cpus"], "num_gpus": ray_cfg["num_gpus"]}
    if ray_cfg["engine"] == "vllm":
        # vLLM on CUDA through Ray's own LLM serving (its OpenAI app); needs vllm and
        # ray[llm] in the model's env (see the README, backend: ray).
        from ray.serve.llm import LLMConfig, build_openai_app

        llm = LLMConfig(
            model_loading_config={"model_id": cfg["model_id"], "model_source": cfg["model_path"]},
            deployment_config={"num_replicas": ray_cfg["replicas"]},
            engine_kwargs={k: v for k, v in (("max_model_len", cfg.get("max_model_len")),
                                             ("dtype", cfg.get("dtype")))
                           if v not in (None, "auto")})
        return build_openai_app({"llm_configs": [llm]})
    from .ray_app import OwllmServer

    deployment: Any = OwllmServer  # a serve.Deployment (the decorator's result)
    return deployment.options(num_replicas=ray_cfg["replicas"],
                              ray_actor_options=actor).bind(cfg)


def connect(cfg: dict[str, Any], job_env: dict[str, Any]) -> None:
    import ray

    ray_cfg = cfg["ray"]
    if ray_cfg["address"] == "local":
        os.environ.pop("RAY_ADDRESS", None)
        ray.init(address="local", num_cpus=cfg["cpus"], include_dashboard=False,
                 object_store_memory=int(ray_cfg["object_store_mb"]) * 1024 * 1024,
                 _temp_dir=cfg["temp_dir"], namespace="owllm", logging_level=logging.WARNING,
                 runtime_env=job_env)
        _log(f"started a local head node ({cfg['cpus']} CPUs, object store "
             f"{ray_cfg['object_store_mb']} MB, files in {cfg['temp_dir']})")
    else:
        ray.init(address=ray_cfg["address"], namespace="owllm", logging_level=logging.WARNING,
                 runtime_env=job_env)
        _log(f"connected to the Ray cluster at {ray_cfg['address']}")


def watch(name: str) -> int:
    """Log the application's status transitions until it fails or disappears (exit 1)."""
    from ray import serve

    last = None
    while True:
        app = serve.status().applications.get(name)
        status = str(app.status.value if hasattr(app.status, "value") else app.status) \
            if app is not None else "MISSING"
        ours, healthy = owllm_status(status)
        if status != last:
            _log(f"application {name!r}: {status} (OWLLM: {ours}"
                 + ("" if healthy else ", not healthy") + ")"
                 + (f": {app.message}" if app is not None and app.message else ""))
            last = status
        if ours in ("FAILED", "STOPPED"):
            return 1
        time.sleep(WATCH_PERIOD_S)


def failure_reason(name: str) -> str:
    """The last line of each failed deployment's message (a replica's constructor error:
    ``OSError: ... config.json``), which Serve's own summary leaves out."""
    from ray import serve

    try:
        app = serve.status().applications.get(name)
    except Exception:  # the cluster itself may be what failed
        return ""
    reasons = []
    for deployment, info in (app.deployments.items() if app is not None else ()):
        lines = [ln.strip() for ln in str(info.message or "").splitlines() if ln.strip()]
        if lines:
            reasons.append(f"{deployment}: {lines[-1]}")
    return ("; " + "; ".join(reasons)) if reasons else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="OWLLM Ray Serve driver")
    parser.add_argument("--config-json", required=True)
    args = parser.parse_args(argv)
    with open(args.config_json, encoding="utf-8") as handle:
        cfg = json.load(handle)
    signal.signal(signal.SIGTERM, _stop)
    import ray
    from ray import serve

    name, local = cfg["model_id"], cfg["ray"]["address"] == "local"
    deployed = False
    try:
        connect(cfg, runtime_env(cfg, stage_package(cfg["stage_dir"])))
        serve.start(http_options={"host": cfg["host"], "port": cfg["port"]})
        _log(f"deploying application {name!r} at {cfg['ray']['route_prefix']} "
             f"({cfg['ray']['replicas']} replicas, engine {cfg['ray']['engine']})")
        deployed = True
        serve.run(build_app(cfg), name=name, route_prefix=cfg["ray"]["route_prefix"])
        return watch(name)
    except RuntimeError as exc:  # serve.run's DEPLOY_FAILED, a cluster that refused us
        print(f"owllm-ray: cannot deploy {name!r}: {exc}{failure_reason(name)}",
              file=sys.stderr, flush=True)
        return 1
    finally:
        if deployed and not local:  # a cluster we do not own keeps running without it
            try:
                serve.delete(name, _blocking=False)
            except Exception as exc:  # the cluster may be gone: say so, still exit
                print(f"owllm-ray: could not delete {name!r}: {exc!r}", file=sys.stderr)
        ray.shutdown()  # address local: stops the head node this process started


if __name__ == "__main__":
    sys.exit(main())

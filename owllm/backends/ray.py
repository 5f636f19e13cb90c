"""``backend: ray``: a model deployed as a Ray Serve application, named after the model id.

The process OWLLM supervises is the model's Serve *driver* (``owllm.inenv.ray_serve``), run
with the model env's python: it starts a local head node (``ray: {address: local}``) or
connects to a cluster, deploys the application at ``route_prefix`` with ``replicas``
replicas of ``num_cpus``/``num_gpus`` each, and watches it.  Readiness is the usual
template through Serve's HTTP proxy: ``/health`` of the application and a one-token
completion (``LaunchSpec.url`` is the proxy's URL with the prefix).  Stopping the driver
deletes the application (a cluster OWLLM did not start) or shuts the head node down with it
(``address: local``: the head's processes share the driver's fate, carry its token and are
its descendants, so the supervisor's group kill and reap find every one).

Serve's application status maps onto OWLLM's (``owllm.inenv.ray_serve.SERVE_STATUS``, applied
by the driver, which only the host's probes see): DEPLOYING is STARTING
(the driver is not ready yet), RUNNING is RUNNING, UNHEALTHY stays RUNNING with ``healthy``
false (Serve replaces the replica; the probes through the proxy fail meanwhile), and
DEPLOY_FAILED ends the driver: FAILED during a start, CRASHED after one.

Replicas run with the packages of the model's own env: on a cluster the driver starts, every
Ray worker runs the env's python; elsewhere the runtime_env names it (``py_executable``).
Why not a ``pip``/``uv`` runtime_env: docs/decisions.md (Ray Serve).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from importlib import metadata, util
from pathlib import Path
from typing import Any

from owllm.backends import BackendContext, Capabilities, LaunchSpec, option_problems
from owllm.backends._common import api_key_vars, hf_model_path, write_run_file
from owllm.backends.transformers import ENV_PACKAGES as TRANSFORMERS_PACKAGES
from owllm.backends.transformers import PROMPT_TEMPLATE
from owllm.config import ModelConfig, RayOptions
from owllm.envs.runner import inenv_argv
from owllm.errors import UsageError
from owllm.paths import private_dir

DRIVER_MODULE = "ray_serve"  # in owllm/inenv/
EXTRA_HINT = "pip install 'owllm[ray]'"
DEFAULT_OBJECT_STORE_MB = 200
DEFAULT_PROXY_URL = "http://127.0.0.1:8000"  # Serve's own default
# An AF_UNIX socket path is at most 107 bytes; Ray puts its sockets at
# <temp>/session_<date>_<pid>/sockets/<name> (about 65 bytes below the temp folder).
MAX_TEMP_DIR_CHARS = 40
KEEP_SESSIONS = 2  # Ray session folders kept per model (the last ones' logs)
_ADDRESS = re.compile(r"^(local|auto|ray://[^\s/]+:\d+|[A-Za-z0-9.\-\[\]:]+:\d+)$")
_PREFIX = re.compile(r"^/[A-Za-z0-9._~\-/]*$")


def ray_version() -> str | None:
    """The orchestrator's Ray (the ``ray`` extra), which the model env's Ray must match."""
    try:
        if util.find_spec("ray") is None:
            return None
    except ValueError:  # sys.modules["ray"] is None: blocked on purpose
        return None
    try:
        return metadata.version("ray")
    except metadata.PackageNotFoundError:
        return None


def options(model: ModelConfig) -> RayOptions:
    """The model's ``ray:`` options with their defaults filled in."""
    opts = model.ray or RayOptions()
    return RayOptions(**{**opts.to_dict(),
                         "route_prefix": opts.route_prefix or f"/{model.model_id}",
                         "object_store_mb": opts.object_store_mb or DEFAULT_OBJECT_STORE_MB,
                         "proxy_url": (opts.proxy_url or DEFAULT_PROXY_URL).rstrip("/")})


def temp_link(root: Path) -> Path:
    """The short link :func:`temp_dir` makes for ``root`` when ``root`` is too long (the
    same name each time: a home's models reuse their links)."""
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"owllm-ray-{digest}"


def temp_dir(root: Path) -> Path:
    """Ray's session folder under the home (``<home>/.owllm/ray/<model id>``), reached
    through a short link in the system temp folder when the home's path would make Ray's
    socket paths too long for AF_UNIX."""
    real = private_dir(root)
    if len(str(real)) <= MAX_TEMP_DIR_CHARS:
        return real
    link = temp_link(real)
    if not (link.is_symlink() and Path(os.readlink(link)) == real):
        staged = link.with_name(f"{link.name}.{os.getpid()}.tmp")
        staged.unlink(missing_ok=True)
        staged.symlink_to(real)
        os.replace(staged, link)
    return link


def prune_sessions(root: Path, keep: int = KEEP_SESSIONS) -> list[Path]:
    """Remove all but the ``keep`` newest Ray session folders of one model (each start of a
    local head node writes a new one, logs included).  Called at launch, under the model's
    start lock, when no head node of this model is running."""
    sessions = sorted((p for p in root.glob("session_*") if p.is_dir() and not p.is_symlink()),
                      key=lambda p: p.stat().st_mtime)
    old = sessions[:-keep] if keep else sessions
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return old


def _env_packages() -> dict[str, Any]:
    version = ray_version()
    pin = f"ray[serve]=={version}" if version else "ray[serve]"
    packages = dict(TRANSFORMERS_PACKAGES)
    packages["packages"] = [*TRANSFORMERS_PACKAGES["packages"], pin]
    packages["probe_imports"] = [*TRANSFORMERS_PACKAGES["probe_imports"], "ray.serve"]
    packages["key_packages"] = [*TRANSFORMERS_PACKAGES["key_packages"], "ray"]
    return packages


class RayBackend:
    """A Ray Serve application per model (see the module docstring)."""

    name = "ray"
    capabilities = Capabilities()
    quant_types: tuple[str, ...] = ()
    prompt_template = PROMPT_TEMPLATE

    @property
    def env_packages(self) -> dict[str, Any]:
        """The transformers server's env plus Ray at the orchestrator's version (a Ray
        cluster refuses workers and drivers of another version)."""
        return _env_packages()

    def config_problems(self, model: ModelConfig) -> list[tuple[str, str]]:
        problems = option_problems(model)
        if ray_version() is None:
            return [*problems, ("backend", f"backend: ray needs the ray extra, which is not "
                                f"installed: {EXTRA_HINT}")]
        opts = model.ray or RayOptions()
        if not _ADDRESS.match(opts.address):
            problems.append(("ray.address", f"{opts.address!r} is not local, auto, "
                             "ray://host:port or host:port"))
        if opts.route_prefix is not None and not _PREFIX.match(opts.route_prefix):
            problems.append(("ray.route_prefix", f"{opts.route_prefix!r} must start with '/' "
                             "and hold only letters, digits, '.', '_', '~', '-', '/'"))
        if opts.address != "local" and opts.object_store_mb is not None:
            problems.append(("ray.object_store_mb", "sizes the head node OWLLM starts; "
                             "it applies to address: local only"))
        if opts.address == "local" and opts.proxy_url is not None:
            problems.append(("ray.proxy_url", "address: local serves on the port OWLLM "
                             "claims for the model; proxy_url is for other clusters"))
        if opts.engine == "vllm" and (opts.num_gpus < 1 or model.device == "cpu"):
            problems.append(("ray.engine", "engine: vllm runs on CUDA through "
                             "ray.serve.llm: set ray.num_gpus >= 1 and device auto or cuda"))
        if model.device == "cuda" and opts.num_gpus <= 0:
            problems.append(("ray.num_gpus", "device: cuda needs ray.num_gpus > 0 (a "
                             "replica without a GPU is scheduled on a CPU)"))
        if model.server_args:
            problems.append(("server_args", "the replicas run OWLLM's app inside Ray "
                             "Serve: there is no server command line to extend"))
        return problems

    def model_path(self, model: ModelConfig, ctx: BackendContext) -> Path | str:
        return hf_model_path(model, ctx)

    def launch(self, model: ModelConfig, model_path: Path | str, ctx: BackendContext,
               host: str, port: int) -> LaunchSpec:
        if ray_version() is None:
            raise UsageError(f"model {model.model_id!r}: backend: ray needs the ray extra",
                             hint=EXTRA_HINT)
        opts = options(model)
        state = ctx.home.state_dir
        prune_sessions(state / "ray" / model.model_id)
        config_file = write_run_file(ctx.home, f"{model.model_id}.ray.json", {
            "model_id": model.model_id, "model_path": str(model_path),
            "model_type": model.model_type, "system_prompt": model.system_prompt,
            "adapter_dir": None, "use_4bit": False, "device": model.device,
            "dtype": model.dtype, "max_model_len": model.max_model_len,
            "generation": {"max_tokens": model.generation.max_tokens,
                           "temperature": model.generation.temperature,
                           "top_p": model.generation.top_p},
            "ray": opts.to_dict(), "host": host, "port": port,
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1,
            "temp_dir": str(temp_dir(state / "ray" / model.model_id)),
            "stage_dir": str(private_dir(state / "run" / f"ray-{model.model_id}")),
        })
        root = f"http://{host}:{port}" if opts.address == "local" else str(opts.proxy_url)
        argv = inenv_argv(ctx.env.python_executable, DRIVER_MODULE, "--config-json",
                          str(config_file))
        return LaunchSpec(argv=argv, env={"PYTHONUNBUFFERED": "1", **api_key_vars(model)},
                          health_path="/health" if opts.engine == "transformers"
                          else "/v1/models",
                          ready_needs_completion=True, url=root + str(opts.route_prefix))

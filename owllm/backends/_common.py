"""What the backends share: locating a model's weights (demo, local folder or hub id),
writing a run file atomically, and the thread budget of a CPU server."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock

from owllm import _progress as progress
from owllm.backends import BackendContext
from owllm.backends._kernels import KernelChoice
from owllm.config import DEMO_SCHEME, ModelConfig
from owllm.envs.runner import run_in_env
from owllm.errors import UsageError
from owllm.httpclient import SERVER_KEY_VAR, api_key
from owllm.paths import PRIVATE_FILE_MODE, Home, make_private, private_dir

# Thread budget of CPU servers (see :func:`thread_budget`).  The count of servers is set by
# whoever runs several at once (the pytest plugin: one per CPU model of the run); the thread
# count is the user's explicit choice for every CPU server OWLLM launches.
SERVERS_VAR = "OWLLM_CPU_SERVERS"
THREADS_VAR = "OWLLM_SERVER_THREADS"
DEMO_MODELS = {"tiny-llama": 0, "tiny-tool-caller": 0}  # name -> seed
# Training the tool caller takes ~100 CPU-seconds on one thread; a busy machine stretches the
# wall clock many times over (a 2-core host running other tests: ~9 minutes, measured).
DEMO_BUILD_TIMEOUT = {"tiny-tool-caller": 3600.0}


def demo_folder(name: str, seed: int) -> str:
    """The cache folder of a demo model: by seed for the random demo, by the content hash of
    its trainer for the trained one (a changed recipe builds a new model)."""
    if name == "tiny-tool-caller":
        from owllm.inenv.tool_caller_train import content_hash

        return f"{name}-{content_hash()}"
    return f"{name}-seed{seed}"


def materialize_demo(name: str, home: Home, python: Path) -> Path:
    """Build the named demo model once per home (under a lock) with ``python`` (an env with
    torch and transformers), by the in-env ``demo_model`` module (``tool_caller_train`` for
    the trained ``tiny-tool-caller``)."""
    if name not in DEMO_MODELS:
        raise UsageError(f"unknown demo model {DEMO_SCHEME}{name}",
                         hint=f"known: {', '.join(DEMO_SCHEME + n for n in DEMO_MODELS)}")
    seed = DEMO_MODELS[name]
    out = home.cache_dir / "models" / demo_folder(name, seed)
    # The trained demo has its own builder (it reuses the random demo's architecture).
    module = "demo_model" if name == "tiny-llama" else "tool_caller_train"
    home.locks_dir.mkdir(parents=True, exist_ok=True)
    # The first build trains a tokenizer and writes weights; later runs only check the marker.
    with (progress.step(f"preparing demo model {DEMO_SCHEME}{name} in {out}"),
          FileLock(str(home.locks_dir / f"demo-{name}.lock"))):
        run_in_env(python, module, ["--out", str(out), "--seed", str(seed)],
                   timeout=DEMO_BUILD_TIMEOUT.get(name),
                   what=f"building demo model {DEMO_SCHEME}{name}")
    return out


def demo_python(ctx: BackendContext) -> Path:
    """The python that builds demo models: the model's env when it has torch (transformers,
    vLLM), else the CPU transformers env (llama.cpp's env has no torch).  Every backend gets
    the same weights from the same builder and seed."""
    if ctx.env.torch_version:
        return ctx.env.python_executable
    builder = ModelConfig(model_id="_demo_builder", base_model=DEMO_SCHEME + "tiny-llama",
                          backend="transformers", device="cpu")
    return ctx.registry.get_env_for_model(builder).python_executable


def hf_model_path(model: ModelConfig, ctx: BackendContext) -> Path | str:
    """A Hugging Face model folder: the built demo, a local folder (relative to the config's
    home), or a hub id passed through for the server to resolve."""
    if model.is_demo:
        return materialize_demo(model.base_model[len(DEMO_SCHEME):], ctx.home, demo_python(ctx))
    candidate = Path(model.base_model).expanduser()
    if not candidate.is_absolute():
        local = ctx.base_dir / candidate
        if local.exists():
            return local.resolve()
    if candidate.exists():
        return candidate.resolve()
    return model.base_model  # a hub id: the server resolves it (its cache or a download)


def runs_on_cpu(model: ModelConfig, ctx: BackendContext) -> bool:
    """True when the server must not use a GPU: the model says cpu, or its env is a CPU
    build (keys carry their wheel tag: vllm-cpu, llamacpp-cpu, torch-cpu-...)."""
    return model.device == "cpu" or "cpu" in ctx.env.key.split("-") or \
        ctx.env.cuda_available is False


def api_key_vars(model: ModelConfig, variable: str = SERVER_KEY_VAR) -> dict[str, str]:
    """``{variable: key}`` for a model with ``api_key_env`` (its server requires the key),
    else nothing.  Passed in the server's environment, never on its command line."""
    key = api_key(model.api_key_env, what=f"model {model.model_id!r}")
    return {variable: key} if key else {}


def write_run_file(home: Home, name: str, payload: dict[str, Any] | str) -> Path:
    """``<state>/run/<name>`` written atomically (a reader never sees half a file), private
    (0600 in a 0700 folder: run files carry prompts and templates)."""
    run_dir = private_dir(home.state_dir / "run")
    path = run_dir / name
    tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
    text = payload if isinstance(payload, str) else json.dumps(payload, indent=2)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    with open(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    make_private(tmp)  # a leftover tmp of a crashed run keeps its old mode through O_TRUNC
    os.replace(tmp, path)
    return path


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count: a
    container or ``taskset`` limits it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _positive(environ: Mapping[str, str], name: str) -> int | None:
    text = environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"${name}={text!r} is not a whole number",
                         hint=f"set {name} to a positive integer, or unset it") from None
    if value < 1:
        raise UsageError(f"${name}={value} must be at least 1",
                         hint=f"set {name} to a positive integer, or unset it")
    return value


def thread_budget(environ: Mapping[str, str] | None = None,
                  cores: int | None = None) -> KernelChoice | None:
    """How many compute threads one CPU server gets, or None for the engine's own default.

    Every engine sizes its thread pool to the whole machine (torch: all cores; llama.cpp:
    half of them; vLLM-cpu: binds its OpenMP threads to the cores it picks, the same cores
    for every server).  Two xdist workers driving three such servers on 2 cores made the
    parallel run twice as slow as the serial one (issue #18): threads spinning in OpenMP
    barriers on cores another server needs.  So: ``$OWLLM_SERVER_THREADS`` when set (the
    user's choice), else ``cores // $OWLLM_CPU_SERVERS`` (at least 1) when whoever starts
    the servers says how many share the machine, else None (one server: all cores)."""
    environ = os.environ if environ is None else environ
    explicit = _positive(environ, THREADS_VAR)
    if explicit is not None:
        return KernelChoice("threads", str(explicit), f"${THREADS_VAR}")
    servers = _positive(environ, SERVERS_VAR)
    if servers is None or servers < 2:
        return None
    cores = usable_cores() if cores is None else cores
    threads = max(1, cores // servers)
    return KernelChoice("threads", str(threads),
                        f"{cores} core(s) shared by {servers} CPU servers (${SERVERS_VAR})")

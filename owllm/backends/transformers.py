"""The transformers backend: our own OpenAI-compatible server (``owllm.inenv.transformers_app``),
run with the model's env python.  The server imports only the env's packages."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from owllm.backends import (
    TOOL_CALL_RULES,
    BackendContext,
    Capabilities,
    LaunchSpec,
    option_problems,
)
from owllm.backends._common import (
    api_key_vars,
    hf_model_path,
    materialize_demo,
    runs_on_cpu,
    thread_budget,
    write_run_file,
)
from owllm.backends._kernels import KernelChoice
from owllm.config import ModelConfig
from owllm.envs.runner import inenv_argv

SERVER_MODULE = "transformers_app"  # in owllm/inenv/

__all__ = ["ENV_PACKAGES", "PROMPT_TEMPLATE", "SERVER_MODULE", "TransformersBackend",
           "materialize_demo"]

PROMPT_TEMPLATE = (
    "You can call tools. Available tools:\n{tools}\n\n" + TOOL_CALL_RULES + "\n\n"
    "User request: {prompt}\n"
)

# The server's env (what owllm/inenv's transformers_app and demo_model import).  A
# ``backends.transformers`` entry in the user's envs.yaml replaces it.
ENV_PACKAGES: dict[str, Any] = {
    "framework": "torch",
    "packages": ["torch==2.13.0", "transformers", "safetensors", "tokenizers",
                 "sentencepiece", "protobuf", "fastapi", "uvicorn", "accelerate",
                 "llguidance"],
    # torch pin per wheel tag (replaces the set's torch entry on that tag).
    "torch": {"cpu": "torch==2.13.0", "cu118": "torch==2.7.1", "cu121": "torch==2.5.1",
              "cu124": "torch==2.6.0", "cu126": "torch==2.9.1", "cu128": "torch==2.9.1"},
    "probe_imports": ["torch", "transformers", "safetensors", "tokenizers", "sentencepiece",
                      "google.protobuf", "fastapi", "uvicorn", "accelerate", "llguidance"],
    "key_packages": ["torch", "transformers", "tokenizers", "safetensors", "accelerate",
                     "llguidance"],
}


class TransformersBackend:
    """OWLLM's own server: the only backend with bitsandbytes 4-bit and LoRA adapters."""

    name = "transformers"
    capabilities = Capabilities()
    quant_types: tuple[str, ...] = ()
    prompt_template = PROMPT_TEMPLATE
    env_packages = ENV_PACKAGES

    def config_problems(self, model: ModelConfig) -> list[tuple[str, str]]:
        return option_problems(model, four_bit=True, adapters=True)

    def model_path(self, model: ModelConfig, ctx: BackendContext) -> Path | str:
        return hf_model_path(model, ctx)

    def launch(self, model: ModelConfig, model_path: Path | str, ctx: BackendContext,
               host: str, port: int) -> LaunchSpec:
        config_file = write_run_file(ctx.home, f"{model.model_id}.json", {
            "model_id": model.model_id,
            "model_path": str(model_path),
            "model_type": model.model_type,
            "system_prompt": model.system_prompt,
            "adapter_dir": model.adapter_dir,
            "use_4bit": model.use_4bit,
            "device": model.device,
            "dtype": model.dtype,
            "generation": {
                "max_tokens": model.generation.max_tokens,
                "temperature": model.generation.temperature,
                "top_p": model.generation.top_p,
            },
            "max_model_len": model.max_model_len,
        })
        argv = inenv_argv(ctx.env.python_executable, SERVER_MODULE, "--config-json",
                          str(config_file), "--host", host, "--port", str(port),
                          *model.server_args)
        env = {"PYTHONUNBUFFERED": "1", **api_key_vars(model)}
        kernels = [dtype_choice(model, ctx)]
        threads = cpu_threads(model, ctx)
        if threads is not None:
            env.update(omp_thread_vars(int(threads.value)))
            kernels.append(threads)
        return LaunchSpec(argv=argv, env=env, kernels=tuple(kernels))


def cpu_threads(model: ModelConfig, ctx: BackendContext) -> KernelChoice | None:
    """The thread budget of a CPU server (:func:`thread_budget`); None on a GPU or when the
    user's environment sets ``OMP_NUM_THREADS`` (their choice, inherited by the server)."""
    if not runs_on_cpu(model, ctx) or os.environ.get("OMP_NUM_THREADS"):
        return None
    return thread_budget()


def omp_thread_vars(threads: int) -> dict[str, str]:
    """torch sizes its intra-op pool from these when it is imported (the server never calls
    ``torch.set_num_threads``)."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def dtype_choice(model: ModelConfig, ctx: BackendContext) -> KernelChoice:
    """What ``dtype`` the server computes in (its own rule, reported in the smoke JSON)."""
    if model.dtype != "auto":
        return KernelChoice("dtype", model.dtype, "set in the model's config")
    if runs_on_cpu(model, ctx):
        return KernelChoice("dtype", "float32", "auto on CPU: the server computes in float32")
    return KernelChoice("dtype", "bfloat16", "auto on a GPU: bfloat16")

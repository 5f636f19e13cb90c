"""The llama.cpp backend: a GGUF model through llama-cpp-python's ``Llama``, driven token by
token by OWLLM's llama.cpp engine and served by OWLLM's own OpenAI app
(``owllm.inenv.llamacpp_server``: the same app, errors, tools and defaults as the transformers
backend), run with the env's python.

Weights: a ``.gguf`` file is served as is; a Hugging Face folder (the demo model included)
is converted once by ``owllm.inenv.gguf_convert`` (its chat template embedded, so chats
render as in transformers) and cached by content hash, then quantized when the config says
``quant: q4_k_m`` (or another llama.cpp type).  A killed conversion leaves no file that
looks finished, and a second server never converts the same model again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from filelock import FileLock

from owllm import _cpu_probe as cpu_probe
from owllm import _progress as progress
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
    runs_on_cpu,
    thread_budget,
    write_run_file,
)
from owllm.backends._kernels import KernelChoice, choose
from owllm.config import ModelConfig
from owllm.envs.runner import inenv_argv, run_in_env
from owllm.errors import UsageError
from owllm.inenv import PACKAGE_DIR

SERVER_MODULE = "llamacpp_server"  # in owllm/inenv/
CONVERTER_MODULE = "gguf_convert"
# Its code is part of a conversion's cache key: a fixed converter converts again.
CONVERTER = Path(PACKAGE_DIR) / f"{CONVERTER_MODULE}.py"
DEFAULT_N_CTX = 2048


def _file_digest(path: Path, memo: dict[str, Any]) -> str:
    """sha256 of a file, remembered by (size, mtime) so big weights are hashed once."""
    stat = path.stat()
    key = str(path.resolve())
    seen = memo.get(key)
    if seen and seen[0] == stat.st_size and seen[1] == stat.st_mtime_ns:
        return str(seen[2])
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    memo[key] = [stat.st_size, stat.st_mtime_ns, sha.hexdigest()]
    return sha.hexdigest()


def content_digest(source: Path, cache: Path) -> str:
    """One hash over a model folder's (or file's) contents and the converter's own code."""
    memo_file = cache / "hashes.json"
    try:
        memo = json.loads(memo_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}
    files = [source] if source.is_file() else sorted(
        p for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))
    outer = hashlib.sha256(CONVERTER.read_bytes())
    for file in files:
        outer.update(f"{file.relative_to(source.parent if source.is_file() else source)}\0"
                     .encode())
        outer.update(_file_digest(file, memo).encode())
    tmp = memo_file.with_name(f".hashes.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(memo), encoding="utf-8")
    os.replace(tmp, memo_file)
    return outer.hexdigest()[:24]


def _run_converter(python: Path, args: list[str], what: str, env_key: str) -> None:
    with progress.step(what):  # minutes for a 7B model: say so
        run_in_env(python, CONVERTER_MODULE, args, env_key=env_key, what=what)


def gguf_for(source: Path, quant: str | None, ctx: BackendContext) -> Path:
    """The cached GGUF of a model folder or .gguf file, converted/quantized on first use."""
    quant = quant.lower() if quant else None
    if source.is_file() and quant is None:
        return source  # a .gguf served as is: nothing to hash or convert
    cache = ctx.home.cache_dir / "gguf"
    cache.mkdir(parents=True, exist_ok=True)
    ctx.home.locks_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(ctx.home.locks_dir / "gguf.lock")):
        digest = content_digest(source, cache)
        if source.is_file() and quant is not None:  # a .gguf: only quantization to do
            out = cache / f"{source.stem}-{digest}.{quant}.gguf"
            if not out.exists():
                _run_converter(ctx.env.python_executable,
                               ["--quantize-gguf", str(source), "--out", str(out),
                                "--quant", quant], f"quantizing {source} to {quant}",
                               ctx.env.key)
            return out
        out = cache / f"{source.name}-{digest}.{quant or 'f16'}.gguf"
        if not out.exists():
            args = ["--model-dir", str(source), "--out", str(out)]
            _run_converter(ctx.env.python_executable,
                           args + (["--quant", quant] if quant else []),
                           f"converting {source} to GGUF ({quant or 'f16'})", ctx.env.key)
        return out


# `quant:` names the converter (owllm/inenv/gguf_convert.py, QUANT_TYPES) turns into llama.cpp file
# types.  A copy, because the converter runs in the model's env and imports no owllm; a
# test keeps the two equal.
QUANT_TYPES = ("q4_0", "q4_1", "q8_0", "q5_0", "q5_1", "q2_k", "q3_k_m", "q4_k_s", "q4_k_m",
               "q5_k_s", "q5_k_m", "q6_k")

PROMPT_TEMPLATE = "Tools:\n{tools}\n" + TOOL_CALL_RULES + "\nRequest: {prompt}\nJSON:"

# llama.cpp's env; a ``backends.llamacpp`` entry in the user's envs.yaml replaces it.
ENV_PACKAGES: dict[str, Any] = {
    "framework": "llamacpp",
    # The server, plus what OWLLM's GGUF converter needs.
    "packages": ["llama-cpp-python[server]==0.3.36", "gguf", "numpy", "safetensors",
                 "sentencepiece"],
    # Built from source on hosts without a matching wheel (~4 min on 2 cores without the
    # multimodal library, mtmd, which doubles the build and serves only vision models).
    # uv rebuilds a registry sdist for every new env (measured), so OWLLM keeps the built
    # wheel in its machine-wide wheelhouse: a second env, in any home, does not compile.
    "build_env": {"CMAKE_ARGS": "-DLLAVA_BUILD=OFF"},
    "keep_built_wheels": ["llama-cpp-python"],
    "cuda": {
        "extra_index_urls": ["https://abetlen.github.io/llama-cpp-python/whl/{cuda}"],
        "build_env": {"CMAKE_ARGS": "-DLLAVA_BUILD=OFF -DGGML_CUDA=on"},
    },
    "probe_imports": ["llama_cpp", "llama_cpp.server", "gguf", "safetensors", "sentencepiece"],
    "key_packages": ["llama-cpp-python", "gguf", "fastapi", "uvicorn"],
}


class LlamaCppBackend:
    """llama.cpp under OWLLM's OpenAI app; GGUF weights, ``quant:``."""

    name = "llamacpp"
    # llama-cpp-python's grammar converter (schema -> GBNF) ignores number bounds (integer
    # ranges up to 1024 values are rewritten as enums by owllm.inenv.llamacpp_grammar; wider
    # ones stay unenforced).
    capabilities = Capabilities(unenforced_keywords=(
        "number.minimum", "number.maximum", "number.exclusiveMinimum",
        "number.exclusiveMaximum", "number.multipleOf", "integer.multipleOf"))
    quant_types = QUANT_TYPES
    prompt_template = PROMPT_TEMPLATE
    env_packages = ENV_PACKAGES

    def config_problems(self, model: ModelConfig) -> list[tuple[str, str]]:
        return option_problems(model, quant_types=self.quant_types)

    def host_build_env(self, cuda: str, build_env: dict[str, str]) -> dict[str, str]:
        """The env's build settings for this host (:func:`host_safe_build_env`)."""
        return host_safe_build_env(cuda, build_env)

    def model_path(self, model: ModelConfig, ctx: BackendContext) -> Path | str:
        if model.base_model.endswith(".gguf") and not model.is_demo:
            path = Path(model.base_model).expanduser()
            path = path if path.is_absolute() else ctx.base_dir / path
            if not path.is_file():
                raise UsageError(f"model {model.model_id!r}: GGUF file {path} not found")
            return gguf_for(path.resolve(), model.quant, ctx)
        source = hf_model_path(model, ctx)
        if not isinstance(source, Path) or not source.is_dir():
            raise UsageError(
                f"model {model.model_id!r}: backend llamacpp needs a local model folder or "
                f"a .gguf file, got {model.base_model!r}",
                hint="download the model first (huggingface-cli download ...) and set "
                     "base_model to its folder, or to a .gguf file")
        return gguf_for(source, model.quant, ctx)

    def launch(self, model: ModelConfig, model_path: Path | str, ctx: BackendContext,
               host: str, port: int) -> LaunchSpec:
        gpu = not runs_on_cpu(model, ctx)
        buffers = extra_buffers_choice(ctx, gpu)
        kernels = [gguf_dtype(model, model_path), buffers]
        settings: dict[str, Any] = {"n_gpu_layers": -1} if gpu else {}
        # A CPU server's thread budget (_common.thread_budget); ``--n_threads`` in the
        # model's server_args still wins (the server applies server_args last).
        threads = None if gpu else thread_budget()
        if threads is not None:
            settings.update(n_threads=int(threads.value), n_threads_batch=int(threads.value))
            kernels.append(threads)
        config_file = write_run_file(ctx.home, f"{model.model_id}.json", {
            "model_id": model.model_id,
            "model_path": str(model_path),
            "model_type": model.model_type,
            "n_ctx": model.max_model_len or DEFAULT_N_CTX,
            "system_prompt": model.system_prompt,
            "generation": {"max_tokens": model.generation.max_tokens,
                           "temperature": model.generation.temperature,
                           "top_p": model.generation.top_p},
            "model_settings": settings,
            "extra_buffers": buffers.value == "on",
        })
        argv = inenv_argv(ctx.env.python_executable, SERVER_MODULE, "--config-json",
                          str(config_file), "--host", host, "--port", str(port),
                          *model.server_args)
        return LaunchSpec(argv=argv, env={"PYTHONUNBUFFERED": "1", **api_key_vars(model)},
                          ready_needs_completion=True,
                          kernels=tuple(kernels))


def gguf_dtype(model: ModelConfig, model_path: Path | str) -> KernelChoice:
    """The weights' type: llama.cpp computes in what the GGUF holds."""
    if model.quant:
        return KernelChoice("dtype", model.quant.lower(), "quant: in the model's config")
    if str(model_path).endswith(".f16.gguf"):
        return KernelChoice("dtype", "f16", "the model was converted to an f16 GGUF")
    return KernelChoice("dtype", "gguf", f"as stored in {Path(model_path).name}")


# llama.cpp's extra buffer types: AMX int8 tiles (compiled in when the CPU lists AMX) and
# repacked Q4 layouts.  They serve quantized weights only; f16 never uses them.
EXTRA_BUFFER_FEATURES = ("amx_tile", "amx_int8")


def extra_buffers_choice(ctx: BackendContext, gpu: bool) -> KernelChoice:
    if gpu:
        return KernelChoice("extra_buffers", "on", "GPU host: CPU kernels unused")
    return choose(ctx, "extra_buffers", fast="on", safe="off", needs=EXTRA_BUFFER_FEATURES,
                  fast_reason="the host runs the CPU kernels llama.cpp picks (probed)")


# llama.cpp's CPU instruction sets: (flag in /proc/cpuinfo, ggml CMake option).  AMX is not
# here on purpose: its kernels are chosen at run time (llama.cpp's extra buffer types, see
# backends/_kernels.py), and a portable build leaves them out.
GGML_ISA = (("sse4_2", "SSE42"), ("avx", "AVX"), ("avx2", "AVX2"), ("bmi2", "BMI2"),
            ("fma", "FMA"), ("f16c", "F16C"), ("avx_vnni", "AVX_VNNI"),
            ("avx512f", "AVX512"), ("avx512vbmi", "AVX512_VBMI"),
            ("avx512_vnni", "AVX512_VNNI"), ("avx512_bf16", "AVX512_BF16"))


def host_safe_build_env(cuda: str, build_env: dict[str, str],
                        report: cpu_probe.IsaReport | None = None) -> dict[str, str]:
    """llama.cpp's CPU build for this host: native (``-march=native``) unless the CPU lists
    an instruction set it cannot run (probed, :mod:`owllm._cpu_probe`); then a build with
    ``GGML_NATIVE=OFF`` and one option per instruction set that does run.  The build
    settings are part of the env's fingerprint and of the wheelhouse key, so such a host
    gets its own wheel."""
    if cuda != "cpu" or "GGML_NATIVE" in str(build_env):
        return build_env
    report = report or cpu_probe.probe_host(cpu_probe.machine_cache_dir())
    failing = report.failing()
    if not failing:
        return build_env
    flags = cpu_probe.cpu_flags()
    isa = " ".join(f"-DGGML_{option}=ON" for flag, option in GGML_ISA
                   if flag in flags and flag not in failing)
    args = f"{build_env.get('CMAKE_ARGS', '')} -DGGML_NATIVE=OFF {isa}".strip()
    return {**build_env, "CMAKE_ARGS": args}

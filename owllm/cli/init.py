"""``owllm init [DIR]``: a starter project for the pytest plugin.

Writes ``configs/llm_backends.yaml`` (the offline demo model, every field commented), an
example suite ``model_suites/test_my_answers.py`` and the pytest settings that make a plain
``pytest`` run OWLLM's built-in suites next to the project's own.  The settings go to a new
``pytest.ini`` only when the folder has no pytest configuration yet; where one exists
(``pyproject.toml``, ``pytest.ini``, a ``tox.ini``/``setup.cfg`` with a pytest section) init
never edits it and prints the lines to add instead, because a new ``pytest.ini`` would
silently replace the project's own settings.

Nothing is overwritten: when a file init would create exists, it writes nothing and exits 2
naming the file.  What it wrote is printed as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from owllm.cli._common import info
from owllm.errors import UsageError
from owllm.paths import CONFIG_RELPATH

SUITE_RELPATH = Path("model_suites") / "test_my_answers.py"
DEMO_MODEL_ID = "demo"
NEXT_COMMAND = f"pytest --owllm-model {DEMO_MODEL_ID} -n 2 --junitxml=report.xml"

CONFIG_TEXT = """\
# OWLLM models (written by `owllm init`). Each entry under `models:` becomes pytest items
# (`pytest --owllm-model ID`) and a server (`owllm server start ID`). The fields are
# documented in OWLLM's README, "Configuration"; unknown keys are errors.
version: 1
models:
  demo:                              # the model id
    # Weights: a local folder (relative to this project), a Hugging Face id, or
    # demo://tiny-llama (a tiny random-weight Llama that OWLLM builds locally, offline).
    base_model: "demo://tiny-llama"
    adapter_dir: null                # PEFT LoRA adapter folder (transformers only)
    model_type: "instruct"           # instruct: chat template + system_prompt; base: plain prompt
    backend: transformers            # transformers (OWLLM's own server), vllm, llamacpp, remote
    device: cpu                      # auto (CUDA when the host has one), cpu, cuda
    dtype: auto                      # auto, float32, bfloat16, float16
    port: 10500                      # preferred port: a hint, a free one is used when taken
    use_4bit: false                  # bitsandbytes 4-bit loading (transformers on CUDA)
    system_prompt: "You are a helpful assistant."  # used when a chat request has none
    generation:                      # server defaults where a request leaves them out
      max_tokens: 16                 # the demo model's answers are noise: keep them short
      temperature: 0.0               # 0: greedy, reproducible answers
      top_p: 1.0
    # max_model_len: 1024            # context length limit passed to the server
    # requirements: []               # extra pip packages (the model then gets its own env)
    # env_key: null                  # override the resolved environment key
    # quant: null                    # llama.cpp only: quantize the GGUF (q4_k_m, q8_0, ...)
    # startup_timeout_s: 900         # deadline for the server to become ready
    # stall_timeout_s: 300           # give up when the server's log shows no progress this long
    # server_args: []                # extra command-line arguments for the backend's server
    # api_key_env: MY_MODEL_KEY      # name of the variable holding the server's API key
    # backend: remote attaches to an OpenAI-compatible endpoint OWLLM did not start
    # (no base_model, no env): then set base_url, and optionally the three after it.
    # base_url: http://gateway:8000/v1  # remote only: the endpoint (with or without /v1)
    # served_model: org/Model-7B     # remote only: the endpoint's name for it (default: the id)
    # headers: {X-Team: qa}          # remote only: extra headers (the key goes in api_key_env)
    # timeout_s: 30                  # remote only: per-request timeout of attach and status
    # tls_verify: true               # remote only: verify the endpoint's TLS certificate
    # ca_bundle: certs/ca.pem        # remote only: a private CA's PEM file (to verify with)
    # ray: {address: local, replicas: 2, num_cpus: 0.5}  # backend: ray (owllm[ray] extra)
    # checks:                        # quality gates: pytest items test_quality[demo-...]
    #   tool_calls: {cases: builtin, samples: 20, min_pass_rate: 0.9, constrained: false}
    #   latency: {max_startup_s: 600, max_first_token_s: 5, min_tokens_per_s: 10}
    #   parity: {with: other-model-id, min_prefix_tokens: 16}  # same weights, other backend
    # (the demo's random weights score ~0% on tool calls: set min_pass_rate: 0 to see the rate)
# checks: {}                         # the default checks of every model (a model's override)
# tools: []                          # your tools: {callable: "pkg.mod:func", parameters: {...}}
# tool_server: {host: 127.0.0.1, port: 8763, call_timeout_s: 10, api_key_env: null}
"""

SUITE_TEXT = '''\
"""Your own checks on a model's answers (written by `owllm init`; edit freely).

A test that takes `owllm_model_id` runs once per selected model (`pytest --owllm-model demo`);
`owllm_server` is that model's running server, started once per test run and shared by the
pytest-xdist workers.  Any OpenAI-compatible client works against `owllm_server["url"] + "/v1"`.
OWLLM's built-in env, model, tools and fuzz suites run next to this file.
"""

from __future__ import annotations

from typing import Any

import pytest

from owllm import httpclient

pytestmark = [pytest.mark.owllm_model, pytest.mark.slow]


def test_answers_a_question(owllm_model_id: str, owllm_server: dict[str, Any]) -> None:
    # owllm.httpclient: no proxy for loopback, the API key when the model has api_key_env,
    # and the name the server knows the model by (served_model, for backend: remote)
    response = httpclient.post(owllm_server["url"] + "/v1/chat/completions", timeout=120,
                               headers=httpclient.row_headers(owllm_server), json={
        "model": httpclient.served_model(owllm_server), "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": "Name a colour."}]})
    assert response.status_code == 200, response.text
    answer = response.json()
    # The demo model's weights are random: assert on behaviour, not on the words.
    assert isinstance(answer["choices"][0]["message"]["content"], str)
    assert answer["usage"]["completion_tokens"] <= 8
'''

# The pytest settings, by the file that holds them.
INI_SETTINGS = """\
testpaths = model_suites
# OWLLM's built-in env, model, tools and fuzz suites join every run (same as --owllm)
owllm_suites = true
"""
TOML_SETTINGS = """\
[tool.pytest.ini_options]
testpaths = ["model_suites"]
# OWLLM's built-in env, model, tools and fuzz suites join every run (same as --owllm)
owllm_suites = true
"""


@dataclass(frozen=True)
class PytestSettings:
    """Where the pytest lines go: ``write`` a new file, or print ``text`` for ``file``."""

    file: str
    text: str
    write: bool


def pytest_settings(project: Path) -> PytestSettings:
    """The pytest settings for ``project``: a new ``pytest.ini``, or the lines to add to the
    configuration file pytest already reads there (the first one in pytest's own order)."""
    for name in ("pytest.ini", ".pytest.ini"):
        if (project / name).is_file():
            return PytestSettings(name, "[pytest]\n" + INI_SETTINGS, write=False)
    if (project / "pyproject.toml").is_file():
        return PytestSettings("pyproject.toml", TOML_SETTINGS, write=False)
    for name, section in (("tox.ini", "[pytest]"), ("setup.cfg", "[tool:pytest]")):
        path = project / name
        if path.is_file() and section in path.read_text(encoding="utf-8", errors="replace"):
            return PytestSettings(name, f"{section}\n{INI_SETTINGS}", write=False)
    header = "# pytest settings for OWLLM (written by `owllm init`)\n"
    return PytestSettings("pytest.ini", header + "[pytest]\n" + INI_SETTINGS, write=True)


def init_project(project: Path) -> dict[str, Any]:
    """Write the starter files into ``project``; return what was written (the CLI's JSON).

    Raises UsageError, writing nothing, when one of the files exists already.
    """
    project = project.resolve()
    if project.exists() and not project.is_dir():
        raise UsageError(f"init: {project} is not a folder")
    settings = pytest_settings(project)
    files = {CONFIG_RELPATH: CONFIG_TEXT, SUITE_RELPATH: SUITE_TEXT}
    if settings.write:
        files[Path(settings.file)] = settings.text
    existing = [str(rel) for rel in files if (project / rel).exists()]
    if existing:
        verb = "exists" if len(existing) == 1 else "exist"
        raise UsageError(
            f"init: {', '.join(existing)} already {verb} in {project}; nothing was written",
            hint="move it away, or run `owllm init` in another folder")
    for rel, text in files.items():
        target = project / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            # "x": never replace a file that appeared since the check above.
            with open(target, "x", encoding="utf-8") as handle:
                handle.write(text)
        except FileExistsError:
            raise UsageError(f"init: {rel} appeared in {project} while writing; "
                             "left it alone") from None
    steps = [] if project == Path.cwd().resolve() else [f"cd {project}"]
    return {
        "project": str(project),
        "written": [rel.as_posix() for rel in files],
        "pytest_settings": {"file": settings.file, "written": settings.write,
                            "lines": settings.text},
        "next": [*steps, NEXT_COMMAND],
    }


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "init", parents=[common],
        help="start a project: configs/llm_backends.yaml (demo model), an example suite, "
             "pytest settings")
    parser.add_argument("dir", nargs="?", default=".", metavar="DIR",
                        help="the project folder (default: the current one; created if missing)")
    parser.set_defaults(func=cmd_init)


def cmd_init(args: argparse.Namespace) -> int:
    result = init_project(Path(args.dir))
    settings = result["pytest_settings"]
    if not settings["written"]:
        info(f"owllm init: {settings['file']} exists and was left alone; add these lines "
             f"to it:\n\n{settings['lines']}")
    info(f"owllm init: wrote {', '.join(result['written'])} in {result['project']}; next: "
         + " && ".join(result["next"]))
    print(json.dumps(result, indent=2))
    return 0

"""OWLLM's HF -> GGUF converter, run with the real llamacpp env: the converted demo model
must tokenize and generate exactly like the transformers original, quantization must shrink
it and still load, bad inputs must fail clearly without leaving files, and the cache must
convert a model once."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from owllm.backends import BackendContext
from owllm.backends.llamacpp import gguf_for
from owllm.envs import EnvRegistry
from owllm.envs.runner import inenv_argv
from owllm.paths import Home
from owllm.servers.manager import LLMServerManager

pytestmark = [pytest.mark.slow]

PROMPT = "Hello! How can I help you today?"


@pytest.fixture(scope="module")
def llama_env(owllm_registry: EnvRegistry) -> Any:
    """The run's llamacpp env (the one the shipped config's demo-llamacpp uses)."""
    return owllm_registry.ensure_env("llamacpp-cpu")


def convert(llama_env: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(inenv_argv(llama_env.python_executable, "gguf_convert", *args),
                          capture_output=True, text=True, check=False, timeout=300)


def run_json(python: Path, code: str) -> Any:
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                            check=False, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


LLAMA_GREEDY = """
import json
from llama_cpp import Llama
llm = Llama({path!r}, n_ctx=256, verbose=False)
tokens = llm.tokenize({prompt!r}.encode(), add_bos=True)
out = []
for token in llm.generate(tokens, temp=0.0, top_k=1):
    out.append(token)
    if len(out) == 12:
        break
print(json.dumps({{"tokens": tokens, "generated": out,
                  "template": llm.metadata.get("tokenizer.chat_template")}}))
"""

HF_GREEDY = """
import json
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({path!r})
model = AutoModelForCausalLM.from_pretrained({path!r})
ids = tok({prompt!r}, return_tensors="pt").input_ids
out = model.generate(ids, max_new_tokens=12, do_sample=False)
print(json.dumps({{"tokens": ids[0].tolist(), "generated": out[0, ids.shape[1]:].tolist()}}))
"""


def test_conversion_is_faithful(llama_env: Any, demo_model_dir: Path, env_python: Path,
                                tmp_path: Path) -> None:
    out = tmp_path / "demo.f32.gguf"
    result = convert(llama_env, "--model-dir", str(demo_model_dir), "--out", str(out),
                     "--outtype", "f32")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["gguf"] == str(out)
    llama = run_json(llama_env.python_executable, LLAMA_GREEDY.format(path=str(out),
                                                                      prompt=PROMPT))
    hf = run_json(env_python, HF_GREEDY.format(path=str(demo_model_dir), prompt=PROMPT))
    assert llama["tokens"] == hf["tokens"]  # same vocabulary, same SentencePiece merges
    # Same weights, Q/K permuted right: the same greedy tokens (transformers stops at EOS).
    assert hf["generated"] and llama["generated"][:len(hf["generated"])] == hf["generated"]
    # The chat template travels with the weights (transformers saves chat_template.jinja).
    assert llama["template"] == (demo_model_dir / "chat_template.jinja").read_text()


def test_the_chat_template_is_found_where_transformers_saves_it(tmp_path: Path) -> None:
    from owllm.inenv.gguf_convert import chat_template

    assert chat_template(tmp_path, {}) is None
    assert chat_template(tmp_path, {"chat_template": "{{ x }}"}) == "{{ x }}"
    named = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    assert chat_template(tmp_path, {"chat_template": named}) == "D"
    (tmp_path / "chat_template.jinja").write_text("J")
    assert chat_template(tmp_path, {"chat_template": "{{ x }}"}) == "J"


def test_quantized_model_is_smaller_and_generates(llama_env: Any, demo_model_dir: Path,
                                                  tmp_path: Path,
                                                  owllm_registry: EnvRegistry) -> None:
    f16, q4 = tmp_path / "f16.gguf", tmp_path / "q4.gguf"
    assert convert(llama_env, "--model-dir", str(demo_model_dir), "--out", str(f16)
                   ).returncode == 0
    result = convert(llama_env, "--model-dir", str(demo_model_dir), "--out", str(q4),
                     "--quant", "q4_k_m")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["quant"] == "q4_k_m"
    assert q4.stat().st_size < 0.6 * f16.stat().st_size
    assert not list(tmp_path.glob("*.base.gguf")) and not list(tmp_path.glob(".*tmp"))
    # Served the way OWLLM serves it: llama.cpp's quantized CPU kernels are chosen per host
    # (an AMX VM segfaulted in them when called bare), see backends/_kernels.py.
    config = tmp_path / "configs" / "llm_backends.yaml"
    config.parent.mkdir()
    config.write_text(f"models:\n  q4: {{base_model: {str(q4)!r}, backend: llamacpp, "
                      f"device: cpu, max_model_len: 256}}\n")
    manager = LLMServerManager(config, home=Home(tmp_path / "home"), registry=owllm_registry)
    try:
        row = manager.start_server("q4")
        answer = httpx.post(row["url"] + "/v1/completions", timeout=60, json={
            "model": "q4", "prompt": PROMPT, "max_tokens": 12, "temperature": 0}).json()
        assert answer["usage"]["completion_tokens"] > 0 and answer["choices"][0]["text"]
        assert row["extra"]["kernels"]["extra_buffers"]["value"] in ("on", "off")
    finally:
        manager.stop_all()


@pytest.mark.parametrize(("edit", "args", "message"), [
    pytest.param(lambda d: _config(d, architectures=["GPT2LMHeadModel"]), (),
                 "architecture 'GPT2LMHeadModel' is not converted by OWLLM", id="arch"),
    pytest.param(lambda d: (d / "tokenizer.model").unlink(), (), "no tokenizer.model",
                 id="no-sentencepiece"),
    pytest.param(lambda d: [p.unlink() for p in d.glob("*.safetensors")], (),
                 "no *.safetensors weights", id="no-weights"),
    pytest.param(lambda d: None, ("--quant", "q9_z"), "unknown quant 'q9_z'", id="quant"),
])
def test_bad_input_fails_clearly_and_leaves_nothing(llama_env: Any, demo_model_dir: Path,
                                                    tmp_path: Path, edit: Any,
                                                    args: tuple[str, ...],
                                                    message: str) -> None:
    model = tmp_path / "model"
    shutil.copytree(demo_model_dir, model)
    edit(model)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = convert(llama_env, "--model-dir", str(model), "--out", str(out_dir / "m.gguf"),
                     *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("gguf_convert: error: ") and message in result.stderr
    assert list(out_dir.iterdir()) == []


def _config(folder: Path, **changes: Any) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_cache_converts_once_and_follows_content(llama_env: Any, demo_model_dir: Path,
                                                 tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(demo_model_dir, model)
    ctx = BackendContext(home=Home(tmp_path / "home").ensure(), env=llama_env,
                         base_dir=tmp_path, registry=None)  # type: ignore[arg-type]
    first = gguf_for(model, None, ctx)
    stamp = first.stat().st_mtime_ns
    assert gguf_for(model, None, ctx) == first and first.stat().st_mtime_ns == stamp
    quantized = gguf_for(model, "Q4_K_M", ctx)  # names are case-insensitive
    assert quantized != first and quantized.name.endswith(".q4_k_m.gguf")
    assert gguf_for(first, "q8_0", ctx).name.endswith(".q8_0.gguf")  # a .gguf requantized
    assert gguf_for(first, None, ctx) == first  # a .gguf without quant: served as is
    _config(model, rms_norm_eps=1e-6)  # changed content: a new conversion
    assert gguf_for(model, None, ctx) != first

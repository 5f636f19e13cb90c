"""demo_model: deterministic, atomic, idempotent, and loadable as a fast tokenizer."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from owllm.envs.runner import run_in_env


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(python: Path, out: Path, *extra: str) -> dict[str, Any]:
    return run_in_env(python, "demo_model", ["--out", str(out), *extra], timeout=300)


def test_layout(built_models: dict[str, Any], demo_model_dir: Path, lora_dir: Path) -> None:
    info = built_models["info"]
    assert info["model_dir"] == str(demo_model_dir)
    assert 100_000 < info["params"] < 5_000_000
    for name in ("config.json", "model.safetensors", "tokenizer.model", "tokenizer.json",
                 "generation_config.json", ".owllm-demo.json"):
        assert (demo_model_dir / name).is_file(), name
    config = json.loads((demo_model_dir / "config.json").read_text())
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    assert config.get("head_dim", 64) == 64
    assert json.loads((demo_model_dir / "generation_config.json").read_text())["eos_token_id"]
    assert (demo_model_dir / "model.safetensors").stat().st_size < 20 * 2**20
    assert (lora_dir / "adapter_config.json").is_file()
    assert not [p for p in demo_model_dir.parent.iterdir() if p.name.startswith(".")]


def test_same_seed_same_bytes_and_idempotent(env_python: Path, demo_model_dir: Path,
                                              tmp_path: Path) -> None:
    again = tmp_path / "again"
    build(env_python, again, "--seed", "0")
    for name in ("model.safetensors", "tokenizer.json", "tokenizer.model"):
        assert digest(again / name) == digest(demo_model_dir / name), name
    before = (again / "model.safetensors").stat().st_mtime_ns
    second = build(env_python, again, "--seed", "0")
    assert second["seconds"] < 1.0
    assert (again / "model.safetensors").stat().st_mtime_ns == before


def test_tokenizer_and_template(env_python: Path, demo_model_dir: Path) -> None:
    script = f"""
import json, time
from transformers import AutoModelForCausalLM, AutoTokenizer
AutoModelForCausalLM.from_pretrained({str(demo_model_dir)!r})  # warm: lazy imports
t0 = time.perf_counter()
tok = AutoTokenizer.from_pretrained({str(demo_model_dir)!r})
model = AutoModelForCausalLM.from_pretrained({str(demo_model_dir)!r})
load = time.perf_counter() - t0
text = "Hello {{\\"tool\\": 42}} é 漢"
msgs = [{{"role": "system", "content": "S"}}, {{"role": "user", "content": "U"}},
        {{"role": "assistant", "content": "A"}}, {{"role": "tool", "content": "T"}}]
rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
print(json.dumps({{"fast": tok.is_fast, "roundtrip": tok.decode(tok(text).input_ids,
    skip_special_tokens=True) == text, "bos": tok.bos_token, "eos": tok.eos_token,
    "pad": tok.pad_token, "rendered": rendered, "load": load}}))
"""
    result = subprocess.run([str(env_python), "-c", script], capture_output=True, text=True,
                            check=True, timeout=120)
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["fast"] and info["roundtrip"]
    assert info["bos"] and info["eos"] and info["pad"]
    for part in ("S", "U", "A", "T"):
        assert part in info["rendered"]
    assert info["load"] < 1.0


# sha256 of demo://tiny-llama (seed 0) as built before the tool caller was added: its
# weights and tokenizer must stay bit-identical (llama.cpp's GGUF cache, parity checks and
# every recorded digest key on them).
TINY_LLAMA_DIGESTS = {
    "model.safetensors": "645db7b8d7f913b76e1152c7a884c712553486223a6d86fd301ff70c14f82a79",
    "tokenizer.json": "68f20aea2b062a61069e61891bb33251280e59598e317ea0e6afd72fb6e83139",
    "tokenizer.model": "87b1881a9a133e409548a2b8598498839d44624ee248cbb146ff8638ebe7ccd7",
}


def test_tiny_llama_bytes_are_pinned(demo_model_dir: Path) -> None:
    for name, expected in TINY_LLAMA_DIGESTS.items():
        assert digest(demo_model_dir / name) == expected, name

"""Materialize OWLLM's demo model: a tiny random-weight Llama with a locally trained tokenizer.

In-env module (``owllm.inenv``), run with a provisioned env's python (torch, transformers,
tokenizers, sentencepiece); it never imports the host-side ``owllm``::

    python owllm/inenv/__main__.py demo_model --out DIR [--seed 0] [--lora-out DIR2]

It prints one JSON object (what it built) on stdout, the protocol of ``run_in_env``.

* Deterministic: the same seed gives the same weight bytes and the same tokenizer.
* Sized so the same weights can serve on vLLM's CPU backend and llama.cpp too: head_dim 64
  (vLLM's CPU attention rejects 16) and a SentencePiece tokenizer (``tokenizer.model``, which
  llama.cpp's GGUF converter accepts; it refuses a locally trained BPE pre-tokenizer).  The
  fast ``tokenizer.json`` is derived from the same SentencePiece model (byte fallback, so any
  text encodes) and matches it id for id.
* Atomic: built in a temporary sibling folder and renamed into place; a complete folder (its
  marker names the builder version and seed) is left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ._report import report

BUILDER_VERSION = 1
MARKER = ".owllm-demo.json"
VOCAB_SIZE = 512

# The tokenizer's training text: prose, digits, JSON and tool-call punctuation, chat words.
CORPUS = """\
Hello! How can I help you today? I am a small assistant model built for testing.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
What is 42 * 17? The answer is 714. Compute 3 + 4 - 2 / 1 and 10 ** 2 % 7.
{"tool": "calculator", "args": {"expression": "42 * 17"}, "id": "call_1"}
{"tool": "echo", "args": {"text": "hello world"}, "id": "call_2"}
[{"name": "current_time", "arguments": {"timezone": "UTC"}}] true false null
system user assistant tool function arguments result content message response
Once upon a time there was a model that answered every question in JSON.
0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 3.14 -1 +2 (a) [b] {c} <d> "e" 'f' _g :h ;i ,j .k
"""

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>\n{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}<|user|>\n{{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}<|assistant|>\n"
    "{% if message.get('tool_calls') %}{{ message['tool_calls'] | tojson }}"
    "{% else %}{{ message['content'] }}{% endif %}{{ eos_token }}\n"
    "{% elif message['role'] == 'tool' %}<|tool|>\n{{ message['content'] }}\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def train_sentencepiece(workdir: Path, corpus: str, **options: Any) -> Path:
    """Train the demo recipe's SentencePiece BPE (vocabulary of 512, byte fallback, split
    digits; ``options`` add to it) on ``corpus`` in ``workdir``; return ``sp.model``."""
    import sentencepiece as spm

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "corpus.txt").write_text(corpus, encoding="utf-8")
    # The trainer records its input and output paths inside tokenizer.model: train with
    # relative names from inside workdir so the bytes do not depend on the temp folder.
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        spm.SentencePieceTrainer.train(
            input="corpus.txt", model_prefix="sp", vocab_size=VOCAB_SIZE, model_type="bpe",
            character_coverage=1.0, byte_fallback=True, unk_id=0, bos_id=1, eos_id=2,
            pad_id=-1, hard_vocab_limit=False, num_threads=1, minloglevel=2,
            split_digits=True, **options)
    finally:
        os.chdir(cwd)
    return workdir / "sp.model"


def train_tokenizer(workdir: Path, corpus: str = CORPUS * 20) -> Path:
    """Train the SentencePiece model on ``corpus`` (the demo's by default); return the folder
    holding the HF tokenizer files."""
    return fast_tokenizer(train_sentencepiece(workdir, corpus), workdir / "tokenizer",
                          CHAT_TEMPLATE)


def fast_tokenizer(sp_model: Path, out: Path, chat_template: str) -> Path:
    """``out``: ``sp_model`` as ``tokenizer.model`` plus the matching fast tokenizer (the
    SentencePiece BPE as a ``tokenizers`` pipeline, Llama layout) with ``chat_template``;
    shared by the demo model and the trained tool caller (``tool_caller_tok``)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    out.mkdir()
    shutil.copy(sp_model, out / "tokenizer.model")
    extracted = SentencePieceExtractor(str(sp_model)).extract(models.BPE)
    tok = Tokenizer(models.BPE(vocab=extracted["vocab"], merges=extracted["merges"],
                               unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                           normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="</s>",
                                   chat_template=chat_template)
    fast.save_pretrained(out)
    return out


def build_model(out: Path, vocab_size: int, seed: int, head_dim: int = 64) -> int:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=128 // head_dim, num_key_value_heads=128 // head_dim,
        head_dim=head_dim,
        max_position_embeddings=1024, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model.save_pretrained(out, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def build_lora(model_dir: Path, out: Path, seed: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed + 1)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    # init_lora_weights=False: random A *and* B, so the adapter visibly changes the output.
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                        init_lora_weights=False, task_type="CAUSAL_LM")

    def build(tmp: Path) -> None:
        get_peft_model(base, config).save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps({"builder_version": BUILDER_VERSION,
                                              "seed": seed, "lora": True}))

    _publish(out, build)


def _complete(folder: Path, seed: int, head_dim: int = 64) -> bool:
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return bool(marker.get("builder_version") == BUILDER_VERSION and marker.get("seed") == seed
                and marker.get("head_dim", 64) == head_dim)


def _publish(out: Path, build: object) -> None:
    """Run ``build(tmp)`` in a temporary sibling of ``out`` and rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the model from other users
    try:
        build(tmp)  # type: ignore[operator]
        for item in tmp.iterdir():  # safetensors writes 0600; the folder is meant to be shared
            item.chmod(0o644)
        if out.exists():  # an incomplete or stale folder from an older builder
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def materialize(out: Path, seed: int, head_dim: int = 64) -> dict[str, object]:
    started = time.perf_counter()
    params = 0
    if not _complete(out, seed, head_dim):
        def build(tmp: Path) -> None:
            nonlocal params
            work = Path(tempfile.mkdtemp(prefix="owllm-demo-"))
            try:
                tokenizer_dir = train_tokenizer(work)
                for item in tokenizer_dir.iterdir():
                    shutil.copy(item, tmp / item.name)
                from transformers import AutoTokenizer

                vocab = len(AutoTokenizer.from_pretrained(tmp))
                params = build_model(tmp, vocab, seed, head_dim)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            (tmp / MARKER).write_text(json.dumps({"builder_version": BUILDER_VERSION,
                                                  "seed": seed, "params": params,
                                                  "head_dim": head_dim}))
        _publish(out, build)
    else:
        params = json.loads((out / MARKER).read_text()).get("params", 0)
    return {"model_dir": str(out), "params": params,
            "seconds": round(time.perf_counter() - started, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lora-out", type=Path, default=None)
    parser.add_argument("--head-dim", type=int, choices=(16, 32, 64, 128), default=64,
                        help="attention head size (vLLM's CPU attention rejects 16: tests "
                             "use that to break its engine on purpose)")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    def build() -> dict[str, Any]:
        result = materialize(args.out.resolve(), args.seed, args.head_dim)
        if args.lora_out is not None:
            if not _complete(args.lora_out.resolve(), args.seed):
                build_lora(args.out.resolve(), args.lora_out.resolve(), args.seed)
            result["lora_dir"] = str(args.lora_out.resolve())
            result["seconds"] = round(time.perf_counter() - started, 3)
        return result

    # Any failure is reported as one line for the caller's error message.
    return report(build, failure=Exception, code=1,
                  describe=lambda exc: f"demo model build failed: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    sys.exit(main())

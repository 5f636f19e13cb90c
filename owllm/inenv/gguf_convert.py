"""Convert a Hugging Face Llama-family folder to GGUF (and optionally quantize it).

In-env module (``owllm.inenv``), run with the ``llamacpp`` env's python (gguf, numpy,
safetensors, sentencepiece, llama_cpp); it never imports the host-side ``owllm``::

    python owllm/inenv/__main__.py gguf_convert --model-dir DIR --out FILE.gguf \
        [--outtype f16] [--quant q4_k_m]

It prints one JSON object (what it wrote) on stdout, the protocol of ``run_in_env``.

Why our own converter: llama.cpp's ``convert_hf_to_gguf.py`` is not part of any installed
package, and it refuses tokenizers it has not fingerprinted ("BPE pre-tokenizer was not
recognized"), which includes every locally trained one.  This writer covers the Llama layout
(LlamaForCausalLM, MistralForCausalLM) with a SentencePiece ``tokenizer.model``, the same
way the stock converter does (its Q/K permutation, token types, special ids and chat
template).  Other architectures: convert with llama.cpp's own script and give OWLLM the
``.gguf`` path.

The output is written to a temporary sibling and renamed into place, so a killed conversion
never leaves a file that looks complete.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ._report import report

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
# `quant:` names in the YAML -> llama.cpp file types (LLAMA_FTYPE_MOSTLY_*).
QUANT_TYPES = {"q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "q2_k": 10,
               "q3_k_m": 12, "q4_k_s": 14, "q4_k_m": 15, "q5_k_s": 16, "q5_k_m": 17,
               "q6_k": 18}


class ConversionError(Exception):
    pass


def permute(weights: Any, n_head: int, n_head_kv: int | None) -> Any:
    """HF's rotary layout (halves) -> llama.cpp's (interleaved pairs), as the stock converter."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def load_tensors(model_dir: Path) -> dict[str, Any]:
    from safetensors.numpy import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ConversionError(f"{model_dir}: no *.safetensors weights (only safetensors "
                              "folders are converted; save with safe_serialization=True)")
    tensors: dict[str, Any] = {}
    for file in files:
        try:
            tensors.update(load_file(str(file)))
        except (TypeError, ValueError) as exc:  # bf16 has no numpy dtype
            raise ConversionError(f"{file}: cannot read as numpy ({exc}); save the model "
                                  "as float16 or float32") from exc
    return tensors


def vocab(model_dir: Path, vocab_size: int) -> tuple[list[bytes], list[float], list[int]]:
    from gguf import TokenType as T
    from sentencepiece import SentencePieceProcessor

    sp_file = model_dir / "tokenizer.model"
    if not sp_file.is_file():
        raise ConversionError(f"{model_dir}: no tokenizer.model (a SentencePiece tokenizer is "
                              "needed; convert other tokenizers with llama.cpp's script)")
    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(sp_file))
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [int(T.UNUSED)] * vocab_size
    for i in range(min(sp.vocab_size(), vocab_size)):
        kind = T.NORMAL
        if sp.IsUnknown(i):
            kind = T.UNKNOWN
        elif sp.IsControl(i):
            kind = T.CONTROL
        elif sp.IsUnused(i):
            kind = T.UNUSED
        elif sp.IsByte(i):
            kind = T.BYTE
        tokens[i], scores[i], types[i] = sp.IdToPiece(i).encode(), sp.GetScore(i), int(kind)
    config = _json(model_dir / "tokenizer_config.json")
    for raw_id, data in (config.get("added_tokens_decoder") or {}).items():
        token_id = int(raw_id)
        if token_id < vocab_size and types[token_id] == int(T.UNUSED):
            tokens[token_id] = data["content"].encode()
            scores[token_id] = -1000.0
            types[token_id] = int(T.CONTROL if data.get("special") else T.USER_DEFINED)
    return tokens, scores, types


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def chat_template(model_dir: Path, tok_config: dict[str, Any]) -> str | None:
    """The model's chat template: ``chat_template.jinja`` (transformers >= 4.43 saves it
    there), else ``tokenizer_config.json``'s ``chat_template`` (a string, or the named list
    whose ``default`` entry llama.cpp uses).  Embedded as ``tokenizer.chat_template`` so that
    the llama.cpp engine renders chats exactly as transformers does."""
    file = model_dir / "chat_template.jinja"
    if file.is_file():
        return file.read_text(encoding="utf-8")
    template = tok_config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def convert(model_dir: Path, out: Path, outtype: str = "f16") -> dict[str, Any]:
    """Write ``model_dir`` as a GGUF file at ``out`` (atomically, via a temporary sibling).

    One function on purpose (over 60 lines): it follows llama.cpp's convert_hf_to_gguf.py
    step for step (hyperparameters, tokenizer, tensors, write), and the GGUF writer must see
    them in that order; split apart, the steps would pass the writer's state around."""
    import gguf
    import numpy as np

    config = _json(model_dir / "config.json")
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in ARCHITECTURES:
        raise ConversionError(f"{model_dir}/config.json: architecture {arch!r} is not "
                              f"converted by OWLLM (supported: {', '.join(ARCHITECTURES)}); "
                              "convert it with llama.cpp's convert_hf_to_gguf.py and set "
                              "base_model to the .gguf file")
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // n_head)
    n_layers = int(config["num_hidden_layers"])
    vocab_size = int(config["vocab_size"])
    tensors = load_tensors(model_dir)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)

    tmp = Path(tempfile.mkstemp(prefix=f".{out.name}-", suffix=".tmp", dir=out.parent)[1])
    try:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        writer.add_name(model_dir.name)
        writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
        writer.add_embedding_length(hidden)
        writer.add_block_count(n_layers)
        writer.add_feed_forward_length(int(config["intermediate_size"]))
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_kv)
        writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
        writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
        writer.add_rope_dimension_count(head_dim)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_vocab_size(vocab_size)
        file_type = gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16" else \
            gguf.LlamaFileType.ALL_F32
        writer.add_file_type(int(file_type))

        tokens, scores, types = vocab(model_dir, vocab_size)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        tok_config = _json(model_dir / "tokenizer_config.json")
        gen_config = _json(model_dir / "generation_config.json")
        for setter, key in ((writer.add_bos_token_id, "bos_token_id"),
                            (writer.add_eos_token_id, "eos_token_id"),
                            (writer.add_pad_token_id, "pad_token_id")):
            value = gen_config.get(key, config.get(key))
            if isinstance(value, list):
                value = value[0] if value else None
            if isinstance(value, int):
                setter(value)
        writer.add_unk_token_id(0)
        writer.add_add_bos_token(bool(tok_config.get("add_bos_token", True)))
        writer.add_add_eos_token(bool(tok_config.get("add_eos_token", False)))
        template = chat_template(model_dir, tok_config)
        if template is not None:
            writer.add_chat_template(template)

        for name, data in tensors.items():
            if name.endswith(".rotary_emb.inv_freq"):
                continue
            if name.endswith("q_proj.weight"):
                data = permute(data, n_head, n_head)
            elif name.endswith("k_proj.weight"):
                data = permute(data, n_head, n_kv)
            new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if new_name is None:
                raise ConversionError(f"{model_dir}: cannot map tensor {name!r} to GGUF")
            # 1-d tensors (norms) stay f32, as llama.cpp expects; matrices take outtype.
            dtype = np.float16 if outtype == "f16" and data.ndim > 1 else np.float32
            writer.add_tensor(new_name, np.ascontiguousarray(data.astype(dtype)))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"gguf": str(out), "tensors": len(tensors), "outtype": outtype,
            "bytes": out.stat().st_size}


def quantize(source: Path, out: Path, quant: str) -> dict[str, Any]:
    """Quantize with the llama.cpp library the env built (llama_model_quantize)."""
    import ctypes

    import llama_cpp

    try:
        ftype = QUANT_TYPES[quant]
    except KeyError:
        raise ConversionError(f"unknown quant {quant!r}; known: {', '.join(QUANT_TYPES)}") \
            from None
    tmp = Path(tempfile.mkstemp(prefix=f".{out.name}-", suffix=".tmp", dir=out.parent)[1])
    try:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        code = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(),
                                              ctypes.byref(params))
        if code != 0:
            raise ConversionError(f"llama_model_quantize({quant}) failed with code {code}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"gguf": str(out), "quant": quant, "bytes": out.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", type=Path, help="a Hugging Face model folder")
    source.add_argument("--quantize-gguf", type=Path, help="an f16/f32 .gguf to quantize")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--outtype", choices=("f16", "f32"), default="f16")
    parser.add_argument("--quant", default=None, help=", ".join(QUANT_TYPES))
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def run() -> dict[str, Any]:
        if args.quantize_gguf:
            if not args.quant:
                raise ConversionError("--quantize-gguf needs --quant")
            if args.quant not in QUANT_TYPES:
                raise ConversionError(f"unknown quant {args.quant!r}; "
                                      f"known: {', '.join(QUANT_TYPES)}")
            result = quantize(args.quantize_gguf, args.out, args.quant)
        elif args.quant:
            if args.quant not in QUANT_TYPES:  # fail before the conversion, not after
                raise ConversionError(f"unknown quant {args.quant!r}; "
                                      f"known: {', '.join(QUANT_TYPES)}")
            base = args.out.with_name(args.out.stem + ".base.gguf")
            result = convert(args.model_dir, base, args.outtype)
            try:
                result = quantize(base, args.out, args.quant)
            finally:
                base.unlink(missing_ok=True)
        else:
            result = convert(args.model_dir, args.out, args.outtype)
        return result

    return report(run, failure=ConversionError, code=2,
                  describe=lambda exc: f"gguf_convert: error: {exc}")


if __name__ == "__main__":
    sys.exit(main())

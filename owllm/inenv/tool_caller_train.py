"""Train ``demo://tiny-tool-caller``: the demo model's architecture, taught to answer OWLLM's
tool prompts with strict JSON calls.

In-env module (run with an env that has torch and transformers; never imports the host-side
``owllm``), the builder ``materialize_demo("tiny-tool-caller", ...)`` runs, as it runs
:mod:`.demo_model` for ``tiny-llama``::

    python owllm/inenv/__main__.py tool_caller_train --out DIR [--seed 0]
    python owllm/inenv/__main__.py tool_caller_train --out DIR --tune [--steps N] [--eval 100]

The first builds once into DIR (a complete folder is reused); ``--tune`` trains with other
settings, without the cache, and can evaluate on fresh examples.

* Same architecture as ``demo://tiny-llama`` (Llama, hidden 128, 2 layers, heads of 64,
  SentencePiece vocabulary of 512 with byte fallback), so vLLM and llama.cpp serve it too; the
  tokenizer is trained on the tool prompts instead of the demo's small corpus, which roughly
  halves the prompt's length in tokens.
* Deterministic: fixed seed, a fixed number of steps, fixed thread count and deterministic
  algorithms, so one machine always builds the same bytes (floating-point reductions may
  still differ on another CPU; the pass rate does not depend on those last bits).
* Cheap: each batch shares one prompt head (backend template and tool list), which is run
  once and its key/value cache broadcast to the batch; only the request and answer tokens are
  run per example, and the loss is on the answer tokens only.  One torch thread: as fast per
  CPU-second as two on an idle machine's small matrices, and far faster on a busy one (two
  threads spin-waiting on a loaded 2-core host cost 5x the CPU time per step, measured).
* Copying arguments is what a model this small learns last: it calls the right tool with
  memorised arguments long before it copies (:data:`STAGES`).  The tokenizer makes copying
  token-for-token (:mod:`.tool_caller_tok`), and every other step is a drill of made-up
  arguments on short prompts, which no memorised value can answer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ._report import report
from .tool_caller_data import CASES_FILE, Example, tokenizer_corpus
from .tool_caller_data import batch as make_batch

TRAINER_VERSION = 1
STEPS = 650
BATCH = 16
PEAK_LR = 4e-3
WARMUP = 40
#: The recipe: (steps, short_mix, batch, peak_lr) per stage, each with a fresh optimizer and
#: a warm-up, on data seeded ``seed + stage``; ``short_mix`` 2: every other step is the
#: copying drill.  Batch 16 rather than 32: 70 % of the cost per step, and the number of
#: updates is what a model this small is short of.  About 100 CPU-seconds on one thread.
#: Measured (docs/decisions.md, "The trained tool caller"): the due tool on 71/75 built-in
#: simple/multiple cases and 10/20 irrelevance cases passed, the exact arguments on none:
#: copying is still not learned in this budget.
Stage = tuple[int, int, int, float]
STAGES: tuple[Stage, ...] = ((650, 2, BATCH, PEAK_LR),)
THREADS = 1


def chat(example: Example) -> list[dict[str, str]]:
    """The messages a client's request becomes on the server (system message first)."""
    system = [{"role": "system", "content": example.system}] if example.system else []
    return [*system, {"role": "user", "content": example.prompt}]


def encode(tok: Any, example: Example) -> tuple[list[int], list[int]]:
    """(prompt ids exactly as OWLLM's transformers server encodes the chat, answer ids + eos)."""
    text = tok.apply_chat_template(chat(example), tokenize=False, add_generation_prompt=True)
    prompt = tok(text, add_special_tokens=False).input_ids
    answer = [*tok(example.answer, add_special_tokens=False).input_ids, tok.eos_token_id]
    return list(prompt), list(answer)


def _shared_head(rows: list[list[int]]) -> int:
    """Length of the token prefix every prompt of the batch shares (at least one token is
    left to each row, so the first answer token is predicted from the per-row part)."""
    first = rows[0]
    length = min(len(r) for r in rows) - 1
    for i in range(length):
        if any(r[i] != first[i] for r in rows):
            return i
    return length


def batch_loss(model: Any, tok: Any, examples: list[Example]) -> Any:
    """Mean cross-entropy over the answer tokens of ``examples`` (one shared prompt head)."""
    import torch
    from transformers import DynamicCache

    encoded = [encode(tok, ex) for ex in examples]
    head = _shared_head([p for p, _ in encoded])
    tails = [p[head:] + a for p, a in encoded]
    width = max(len(t) for t in tails)
    ids = torch.full((len(tails), width), tok.eos_token_id, dtype=torch.long)
    labels = torch.full((len(tails), width), -100, dtype=torch.long)
    for row, ((prompt, answer), tail) in enumerate(zip(encoded, tails, strict=True)):
        ids[row, :len(tail)] = torch.tensor(tail)
        start = len(prompt) - head  # the answer's first position in the tail
        labels[row, start - 1:len(tail) - 1] = torch.tensor(answer)
    cache = DynamicCache()
    model(input_ids=torch.tensor([encoded[0][0][:head]]), past_key_values=cache, use_cache=True)
    for layer in cache.layers:  # broadcast the head's keys/values (gradients still flow)
        layer.keys = layer.keys.expand(len(tails), -1, -1, -1)
        layer.values = layer.values.expand(len(tails), -1, -1, -1)
    positions = torch.arange(head, head + width).unsqueeze(0).expand(len(tails), -1)
    mask = torch.ones(len(tails), head + width, dtype=torch.long)
    logits = model(input_ids=ids, past_key_values=cache, position_ids=positions,
                   attention_mask=mask, use_cache=True).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             labels.reshape(-1), ignore_index=-100)


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model: Any, tok: Any, *, steps: int, batch: int, peak_lr: float, seed: int,
          warmup: int = WARMUP, short_mix: int = 0, log: Any = None) -> dict[str, Any]:
    """Train in place; returns the loss curve summary.  ``short_mix`` n > 0: of every n
    steps, n - 1 train on short prompts (no tool list), the last on a full prompt."""
    import torch

    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak_lr, betas=(0.9, 0.98),
                                  weight_decay=0.01)
    model.train()
    losses: list[float] = []
    started, cpu = time.perf_counter(), time.process_time()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, peak_lr, warmup)
        short = bool(short_mix) and step % short_mix != short_mix - 1
        loss = batch_loss(model, tok, make_batch(rng, batch, short))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss))
        if log is not None and (step % 25 == 0 or step == steps - 1):
            print(f"step {step} loss {sum(losses[-25:]) / len(losses[-25:]):.4f} "
                  f"{time.perf_counter() - started:.0f}s cpu {time.process_time() - cpu:.0f}s",
                  file=log, flush=True)
    model.eval()
    return {"steps": steps, "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
            "train_seconds": round(time.perf_counter() - started, 1),
            # CPU seconds over the thread count: the wall time on idle cores (a shared,
            # busy machine stretches the wall clock, not this)
            "train_cpu_seconds": round(time.process_time() - cpu, 1)}


def generate(model: Any, tok: Any, prompt: str, max_new_tokens: int = 64) -> str:
    """Greedy completion of the chat-templated ``prompt`` (what a server at temperature 0
    answers)."""
    import torch

    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False).input_ids])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    return str(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))


def correct(text: str, example: Example) -> bool:
    """The reply is the due call(s) (same JSON), or prose where no call was due."""
    try:
        value = json.loads(text)
    except ValueError:
        return not example.calls and not text.strip().startswith(("{", "["))
    return bool(example.calls) and value == json.loads(example.answer)


def evaluate(model: Any, tok: Any, count: int, seed: int) -> dict[str, Any]:
    """Exact-match rate on ``count`` fresh examples (another seed than training's)."""
    rng = random.Random(seed + 10_000)
    hits = 0
    misses: list[dict[str, str]] = []
    for _ in range(count):
        example = make_batch(rng, 1)[0]
        text = generate(model, tok, example.prompt)
        if correct(text, example):
            hits += 1
        elif len(misses) < 8:
            misses.append({"request": example.request, "want": example.answer, "got": text})
    return {"eval_exact": round(hits / max(1, count), 3), "eval_count": count,
            "misses": misses}


def build(out: Path, seed: int, *, stages: tuple[Stage, ...] = STAGES,
          log: Any = None) -> dict[str, Any]:
    """Tokenizer + initial weights (the demo builder's) + training, saved to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .demo_model import CHAT_TEMPLATE, build_model
    from .tool_caller_tok import train_tokenizer

    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="owllm-tool-caller-"))
    try:
        tokenizer_dir = train_tokenizer(work, tokenizer_corpus() * 4, CHAT_TEMPLATE)
        for item in tokenizer_dir.iterdir():
            shutil.copy(item, out / item.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(out)
    params = build_model(out, len(tok), seed)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    torch.manual_seed(seed)
    summaries = [train(model, tok, steps=n, batch=size, peak_lr=lr, seed=seed + stage,
                       short_mix=mix, log=log) for stage, (n, mix, size, lr) in enumerate(stages)]
    model.save_pretrained(out, safe_serialization=True)
    return {"params": params, "steps": sum(stage[0] for stage in stages),
            "final_loss": summaries[-1]["final_loss"],
            "train_seconds": round(sum(s["train_seconds"] for s in summaries), 1),
            "train_cpu_seconds": round(sum(s["train_cpu_seconds"] for s in summaries), 1)}


def resume(out: Path, init: Path, seed: int, *, steps: int, batch: int, peak_lr: float,
           short_mix: int = 0, log: Any = None) -> dict[str, Any]:
    """Tuning only: one more cycle from the weights in ``init`` (a fresh optimizer, data
    seeded ``seed``), which is what cycle ``seed`` of :func:`build` does."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    out.mkdir(parents=True, exist_ok=True)
    for item in init.iterdir():
        if item.is_file() and not item.name.startswith("."):
            shutil.copy(item, out / item.name)
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    summary = train(model, tok, steps=steps, batch=batch, peak_lr=peak_lr, seed=seed,
                    short_mix=short_mix, log=log)
    model.save_pretrained(out, safe_serialization=True)
    return summary


SOURCES = ("tool_caller_train.py", "tool_caller_data.py", "tool_caller_tok.py",
           "demo_model.py")
KIND = "tiny-tool-caller"


def content_hash() -> str:
    """12 hex digits over the trainer's sources and settings: the cache key of a built model
    (``tiny-tool-caller-<hash>``), so a change to the data, the prompts or the recipe builds
    a new model instead of reusing a stale one.  Stdlib only: the host calls it too."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (here / name).read_bytes() + b"\0")
    if CASES_FILE.is_file():  # held out of the training data
        digest.update(b"cases\0" + CASES_FILE.read_bytes())
    return digest.hexdigest()[:12]


def _complete(folder: Path, seed: int) -> dict[str, Any] | None:
    from .demo_model import MARKER

    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if marker.get("kind") == KIND and marker.get("seed") == seed and \
            marker.get("content_hash") == content_hash():
        return dict(marker)
    return None


def materialize(out: Path, seed: int) -> dict[str, Any]:
    """Build the trained model into ``out`` once (atomically, like the demo model); a folder
    whose marker names this seed and :func:`content_hash` is reused as is."""
    from .demo_model import MARKER, _publish

    started = time.perf_counter()
    marker = _complete(out, seed)
    if marker is None:
        def work(tmp: Path) -> None:
            nonlocal marker
            result = build(tmp, seed)
            marker = {"kind": KIND, "seed": seed, "content_hash": content_hash(),
                      "trainer_version": TRAINER_VERSION, **result}
            (tmp / MARKER).write_text(json.dumps(marker))
        _publish(out, work)
    assert marker is not None
    return {"model_dir": str(out), "params": marker.get("params", 0), "kind": KIND,
            "train_seconds": marker.get("train_seconds"),
            "seconds": round(time.perf_counter() - started, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--lr", type=float, default=PEAK_LR)
    parser.add_argument("--eval", type=int, default=0, help="evaluate on N fresh examples")
    parser.add_argument("--init", type=Path, default=None,
                        help="with --tune: continue from this model's weights (one cycle)")
    parser.add_argument("--short-mix", type=int, default=0,
                        help="n-1 of every n steps on short prompts (0: none)")
    parser.add_argument("--tune", action="store_true",
                        help="train with --steps/--batch/--lr into --out, bypassing the cache")
    args = parser.parse_args(argv)

    def work() -> dict[str, Any]:
        if not args.tune:
            return materialize(args.out.resolve(), args.seed)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        out = args.out.resolve()
        if args.init is not None:
            result = resume(out, args.init.resolve(), args.seed, steps=args.steps,
                            batch=args.batch, peak_lr=args.lr, short_mix=args.short_mix,
                            log=sys.stderr)
        else:
            result = build(out, args.seed, log=sys.stderr,
                           stages=((args.steps, args.short_mix, args.batch, args.lr),))
        if args.eval:
            model = AutoModelForCausalLM.from_pretrained(out)
            result.update(evaluate(model, AutoTokenizer.from_pretrained(out), args.eval,
                                   args.seed))
        return result

    return report(work, failure=Exception, code=1,
                  describe=lambda exc: f"tool caller training failed: {type(exc).__name__}: "
                                       f"{exc}")


if __name__ == "__main__":
    sys.exit(main())

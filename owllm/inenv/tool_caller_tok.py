"""The tokenizer of ``demo://tiny-tool-caller``: SentencePiece (so llama.cpp converts it and
vLLM loads it), vocabulary of 512, trained so that copying an argument is copying tokens.

In-env module (sentencepiece, tokenizers, transformers; never the host-side ``owllm``).

Why not the demo model's tokenizer recipe: its pieces glue a word to what precedes it
(``▁apples`` after a space, ``"app`` after a quote), so a city name or a word tokenizes one
way in the request and another way inside the JSON answer, and a two-layer model must learn
a mapping instead of a copy (measured: the right tool 25/25, the exact arguments 1/25).  Here
the training text is cut at every boundary between a letter/digit run and anything else
(SentencePiece's ``pretokenization_delimiter``), so no piece crosses such a boundary: a word
or a number encodes to the same tokens wherever it stands, and digits are single tokens
(``split_digits``).  Encoding needs no delimiter: pieces that were never learned never form.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .demo_model import fast_tokenizer

VOCAB_SIZE = 512
#: Never in the training text (a control picture): marks where no piece may cross.
DELIMITER = "\u2402"
_BOUNDARY = re.compile(r"(?<=[A-Za-z0-9])(?=[^A-Za-z0-9])|(?<=[^A-Za-z0-9])(?=[A-Za-z0-9])")


def mark_boundaries(text: str) -> str:
    """``text`` with :data:`DELIMITER` between every letter/digit run and its neighbours."""
    return _BOUNDARY.sub(DELIMITER, text)


def _train_sp(spm: Any) -> None:
    spm.SentencePieceTrainer.train(
        input="corpus.txt", model_prefix="sp", vocab_size=VOCAB_SIZE, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        hard_vocab_limit=False, num_threads=1, minloglevel=2, split_digits=True,
        pretokenization_delimiter=DELIMITER,
    )


def train_tokenizer(workdir: Path, corpus: str, chat_template: str) -> Path:
    """Train on ``corpus``; return the folder holding ``tokenizer.model`` and the matching
    fast tokenizer (the demo model's Llama layout and ``chat_template``)."""
    import sentencepiece as spm

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "corpus.txt").write_text(mark_boundaries(corpus), encoding="utf-8")
    # The trainer records its paths inside tokenizer.model: relative names from inside
    # workdir keep the bytes independent of the temp folder.
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        _train_sp(spm)
    finally:
        os.chdir(cwd)
    return fast_tokenizer(workdir / "sp.model", workdir / "tokenizer", chat_template)

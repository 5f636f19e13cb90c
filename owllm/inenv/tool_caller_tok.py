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

import re
from pathlib import Path

from .demo_model import fast_tokenizer, train_sentencepiece

VOCAB_SIZE = 512
#: Never in the training text (a control picture): marks where no piece may cross.
DELIMITER = "\u2402"
_BOUNDARY = re.compile(r"(?<=[A-Za-z0-9])(?=[^A-Za-z0-9])|(?<=[^A-Za-z0-9])(?=[A-Za-z0-9])")


def mark_boundaries(text: str) -> str:
    """``text`` with :data:`DELIMITER` between every letter/digit run and its neighbours."""
    return _BOUNDARY.sub(DELIMITER, text)


def train_tokenizer(workdir: Path, corpus: str, chat_template: str) -> Path:
    """Train on ``corpus``; return the folder holding ``tokenizer.model`` and the matching
    fast tokenizer (the demo model's Llama layout and ``chat_template``)."""
    sp_model = train_sentencepiece(workdir, mark_boundaries(corpus),
                                   pretokenization_delimiter=DELIMITER)
    return fast_tokenizer(sp_model, workdir / "tokenizer", chat_template)

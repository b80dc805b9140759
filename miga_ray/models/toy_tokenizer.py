"""An offline tokenizer for the toy model: UMT5's tokenizer class over a word-level unigram vocabulary.

Real Wan uses the UMT5 sentencepiece tokenizer; the toy checkpoint ships a ``T5Tokenizer`` of the
same class whose pieces are the toy grammar's words (plus single characters, so any text still
tokenizes), built here without a download and loaded back by ``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

from transformers import T5Tokenizer

WORD_SCORE, CHAR_SCORE = -1.0, -8.0  # log-probabilities: a whole word beats spelling it out


def build_toy_tokenizer(words: Iterable[str], model_max_length: int) -> T5Tokenizer:
    """A T5Tokenizer with one piece per (lower-case) word and a character fallback; ``</s>`` ends every text.

    T5Tokenizer rebuilds itself from its vocabulary on loading, so it cannot keep a lower-casing
    normaliser: capitalised words are spelled out by characters, as the toy prompts are lower-case.
    """
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces = [(f"\u2581{w}", WORD_SCORE) for w in dict.fromkeys(w.lower() for w in words)]
    chars = [(c, CHAR_SCORE) for c in "\u2581" + string.ascii_letters + string.digits + string.punctuation]
    return T5Tokenizer(vocab=specials + pieces + chars, extra_ids=0, model_max_length=model_max_length)

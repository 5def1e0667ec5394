"""Text as every stage and entry point sees it: prepare's cleaning and the model's truncation.

Shared by training (prepare, pretrain, train) and inference (stages/classifier.py: evaluate, the
MLflow model, `make predict`), so new texts are cleaned and cut exactly as the training texts were.
"""

from __future__ import annotations

import html
from typing import Any


def clean_text(text: str) -> str:
    """Decode HTML entities (the drug reviews carry `&#039;`) and collapse whitespace runs: what prepare
    does to every text, so what the model is trained on, and what predictions apply to new texts."""
    return " ".join(html.unescape(text).split())


# Head + tail truncation keeps this share of the token budget from the start of a long text and
# the rest from its end (Sun et al. 2019, "How to Fine-Tune BERT for Text Classification?": 128
# head + 382 tail tokens of 510 beat head-only; reviews often end with the verdict).
HEAD_SHARE = 0.25


def tokenize(tokenizer: Any, texts: list[str], max_length: int, truncation: str) -> dict[str, list[list[int]]]:
    """Token ids (with special tokens, unpadded) of `texts`, at most `max_length` each.

    truncation "head" keeps the beginning of a long text (the tokenizer's own truncation);
    "head_tail" keeps its first HEAD_SHARE and its end, cut inside the special tokens.
    """
    if truncation == "head":
        return dict(tokenizer(texts, truncation=True, max_length=max_length))
    enc = dict(tokenizer(texts))
    for n, ids in enumerate(enc["input_ids"]):
        if len(ids) <= max_length:
            continue
        special = tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True)
        prefix = next(i for i, s in enumerate(special) if not s)
        suffix = next(i for i, s in enumerate(reversed(special)) if not s)
        budget = max_length - prefix - suffix
        head = round(budget * HEAD_SHARE)
        keep = slice(None, prefix + head), slice(len(ids) - suffix - (budget - head), None)
        for key, values in enc.items():
            enc[key][n] = values[n][keep[0]] + values[n][keep[1]]
    return enc

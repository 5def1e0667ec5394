"""Build a tiny random-weight BERT classifier + WordPiece tokenizer in a local dir.

Stands in for the bundled MiniLM in tests: same model class and tokenizer type, but a
few thousand parameters, so a Trainer run takes seconds and nothing is downloaded.
"""

from __future__ import annotations

import re
import string
from pathlib import Path

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_vocab(corpus: list[str], max_words: int = 200) -> dict[str, int]:
    """Specials, single characters, continuation characters, then the corpus's frequent words."""
    counts: dict[str, int] = {}
    for text in corpus:
        for word in re.findall(r"[a-z]+", text.lower()):
            counts[word] = counts.get(word, 0) + 1
    words = sorted(counts, key=lambda w: (-counts[w], w))[:max_words]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    pieces = SPECIALS + chars + ["##" + c for c in string.ascii_lowercase + string.digits]
    pieces += [w for w in words if w not in pieces]
    return {piece: i for i, piece in enumerate(pieces)}


def build_tiny_bert(out_dir: Path, corpus: list[str], num_labels: int = 3, seed: int = 0, num_layers: int = 1,
                    dropout: float = 0.1) -> Path:
    """Save a tiny BertForSequenceClassification and its tokenizer to `out_dir`."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    tokenizer = BertTokenizer(vocab=tiny_vocab(corpus))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=num_layers,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir

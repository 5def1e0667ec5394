"""Build a tiny random-weight MarianMT translation pair (two local dirs) for tests.

Stands in for Helsinki-NLP/opus-mt-* so the real nlpaug BackTranslationAug path runs
offline in seconds: same model and tokenizer classes (MarianMTModel, MarianTokenizer with
source.spm / target.spm / vocab.json), a SentencePiece model trained on the given corpus,
and a few thousand random weights. Random weights never emit EOS, so every generate
runs to `max_length`: keep it small (20-40) wherever these models are used.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

# Marian's own convention: </s> first, <unk> second, <pad> last (also the decoder start).
EOS, UNK, PAD = "</s>", "<unk>", "<pad>"
# Enough varied text for SentencePiece to learn a vocab even when the caller's corpus is tiny.
FILLER = [
    f"the {a} {b} {c} after {d} days."
    for a in ("patient", "doctor", "nurse", "pharmacist")
    for b in ("felt", "reported", "noticed", "described")
    for c in ("less pain", "more sleep", "a headache", "some nausea", "no change")
    for d in ("two", "three", "ten")
]


def train_spm(corpus: list[str], vocab_size: int = 120) -> bytes:
    """A small unigram SentencePiece model (serialized) trained on `corpus` + FILLER."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(corpus) + FILLER),
        model_writer=model,
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a tiny corpus may not support vocab_size pieces
        character_coverage=1.0,
        minloglevel=2,
    )
    return model.getvalue()


def marian_vocab(spm_bytes: bytes) -> dict[str, int]:
    """vocab.json for MarianTokenizer: </s>, <unk>, every SentencePiece piece, then <pad>."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=spm_bytes)
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    ordered = [EOS, UNK] + [p for p in pieces if p not in (EOS, UNK, PAD, "<s>")] + [PAD]
    return {piece: i for i, piece in enumerate(ordered)}


def save_marian(out_dir: Path, spm_file: Path, vocab_file: Path, seed: int, **dims) -> Path:
    """Save a tiny random MarianMTModel and its MarianTokenizer to `out_dir`.

    `dims` override MarianConfig fields (d_model, encoder_layers, init_std, ...).
    """
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    # One "language" on both sides: the same SentencePiece model as source and target.
    tokenizer = MarianTokenizer(source_spm=str(spm_file), target_spm=str(spm_file), vocab=str(vocab_file))
    vocab = tokenizer.get_vocab()
    config = MarianConfig(
        vocab_size=len(vocab),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=512,  # sinusoidal (no weights): covers the tokenizer's 512 cap
        pad_token_id=vocab[PAD],
        eos_token_id=vocab[EOS],
        decoder_start_token_id=vocab[PAD],
        forced_eos_token_id=vocab[EOS],
    )
    for key, value in dims.items():
        if not hasattr(config, key):
            raise TypeError(f"MarianConfig has no field {key!r}")
        setattr(config, key, value)
    torch.manual_seed(seed)
    MarianMTModel(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_tiny_marian_pair(
    root: Path, corpus: list[str], seed: int = 0, vocab_size: int = 120, **dims
) -> tuple[Path, Path]:
    """Save a tiny 'forward' and 'backward' Marian pair under `root`; return (from_dir, to_dir).

    `dims` override MarianConfig fields; a large `init_std` (e.g. 1.0) makes random outputs
    depend on the input (at the default 0.02 every input decodes to the same tokens).
    """
    spm_bytes = train_spm(corpus, vocab_size)
    raw = root / "tiny-marian-spm"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "spm.model").write_bytes(spm_bytes)
    (raw / "vocab.json").write_text(json.dumps(marian_vocab(spm_bytes)), encoding="utf-8")
    from_dir = save_marian(root / "tiny-marian-fwd", raw / "spm.model", raw / "vocab.json", seed, **dims)
    to_dir = save_marian(root / "tiny-marian-bwd", raw / "spm.model", raw / "vocab.json", seed + 1, **dims)
    return from_dir, to_dir

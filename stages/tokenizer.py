"""Adapt the tokenizer to the domain: extend the base vocab with domain words, or build one from scratch.

A SentencePiece model is always trained on the TRAIN split (val is only measured, never
learned from). `extend` keeps the base tokenizer and adds the frequent whole words that it
splits into 2+ pieces (e.g. drug and symptom names) as single-word tokens; the train stage
initialises each new embedding row to the mean of the old sub-token rows listed in
tokenizer_meta.json. `scratch` wraps the SentencePiece model itself as an HF fast tokenizer
with BERT's [CLS] x [SEP] template (the model then starts from random weights).

The splits are streamed, never held: SentencePiece reads train through an iterator (a
seeded sample of about SPM_MAX_BYTES of text when train is larger), extend mode counts only the
words that could become tokens, and the length metrics tokenize LENGTH_BATCH texts at a time.

Inputs:  data/prepare/train.jsonl, data/prepare/val.jsonl
Outputs: models/tokenizer/ (HF tokenizer files, spm.model, spm.vocab, tokenizer_meta.json),
         metrics/tokenizer.json
Params:  tokenizer.*, model.name, seed
Run:     python -m stages.tokenizer
"""

from __future__ import annotations

import io
import itertools
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Collection, Iterable, Iterator, Literal

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import AddedToken, AutoTokenizer, PreTrainedTokenizerFast
from transformers.tokenization_utils_base import generate_merges

from stages import common
from stages.cli import cli
from stages.encoder import save_tokenizer

# BERT's special tokens; spm gives them ids 0-4 in this order (the BERT WordPiece order)
SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
            "mask_token": "[MASK]"}
TYPICAL_MAX_LENGTH = 128  # metrics only: share of texts a 128-token model would truncate
MIN_WORD_CHARS = 3  # shorter words are cheap to split and mostly already in the base vocab
# SentencePiece holds its whole input: unigram needs ~23 bytes of memory per byte of text, BPE ~7
# (sentencepiece 0.2 on bench/bigdata.py's corpus). A larger train split is sampled down to about
# this much text, ~230 MiB for unigram: still millions of words, plenty for a few thousand pieces.
SPM_MAX_BYTES = 10 * 2**20
LENGTH_BATCH = 1000  # texts tokenized at a time for the length metrics


@dataclass(frozen=True)
class TokenizerParams:
    mode: Literal["extend", "scratch"]
    # SentencePiece target; a small corpus stops earlier (no hard limit). It must hold the
    # specials and the alphabet, and in scratch mode it is the model's whole vocabulary.
    vocab_size: Annotated[int, common.Range(32, why="room for the special tokens and the alphabet")]
    model_type: Literal["unigram", "bpe"]
    max_new_tokens: Annotated[int, common.NON_NEGATIVE]  # extend: cap on new embedding rows (0: the base tokenizer)
    min_frequency: Annotated[int, common.AT_LEAST_1]  # extend: a word must occur this often in train

    def __post_init__(self) -> None:
        common.check_ranges(self, "tokenizer")


def load_model_name(path: Path = common.PARAMS_FILE) -> str:
    """`model.name` only: the other `model` keys belong to the train stage."""
    name = (common.read_params(path).get("model") or {}).get("name")
    if not isinstance(name, str) or not name:
        raise common.ParamsError(f"{path}: 'model.name' must be a hub id, a local dir or {common.BUNDLED_MODEL}")
    return name


@dataclass(frozen=True)
class SplitTexts:
    """The texts of a prepare-format split, read from its file again on every iteration: never all held."""

    path: Path

    def __iter__(self) -> Iterator[str]:
        return (row["text"] for row in common.iter_rows(self.path))


def sample(texts: Iterable[str], count: int, size: int, seed: int) -> Iterator[str]:
    """`size` of the `count` texts, drawn with `seed` and kept in corpus order; all of them if there are no more."""
    if count <= size:
        return iter(texts)
    chosen = np.zeros(count, bool)
    chosen[np.random.default_rng(seed).choice(count, size, replace=False)] = True
    return (text for text, keep in zip(texts, chosen) if keep)


def train_spm(texts: Iterable[str], params: TokenizerParams, lowercase: bool, seed: int,
              max_bytes: int = SPM_MAX_BYTES) -> bytes:
    """Train SentencePiece on `texts` (iterated twice, streamed) and return the model proto; ids 0-4 are
    BERT's specials. Texts of more than `max_bytes` in all are sampled down to about that much with `seed`."""
    count = longest = total = 0
    for text in texts:  # a first pass: the proto records the longest sentence allowed
        nbytes = len(text.encode()) + 1
        count, longest, total = count + 1, max(longest, nbytes), total + nbytes
    used = count if total <= max_bytes else count * max_bytes // total
    print(f"tokenizer: SentencePiece on {used} of {count} train texts ({total / 2**20:.1f} MiB)")
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()  # in memory: a model_prefix path would be recorded in the proto
    spm.SentencePieceTrainer.train(
        sentence_iterator=sample(texts, count, used, seed), model_writer=model, vocab_size=params.vocab_size,
        model_type=params.model_type, hard_vocab_limit=False,  # a small corpus may not support vocab_size
        pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, pad_piece="[PAD]", unk_piece="[UNK]",
        control_symbols=["[CLS]", "[SEP]", "[MASK]"],  # reserved ids, never matched inside text by spm
        normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",  # follow the base's casing
        character_coverage=1.0, max_sentence_length=max(4192, longest),
        # all rows given (`sample` did any sampling: spm's own shuffle ignores the seed), one thread: deterministic
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def write_spm(proto: bytes, out_dir: Path) -> spm.SentencePieceProcessor:
    """Write spm.model and spm.vocab (one "piece<TAB>score" line per id, spm_train's format) into `out_dir`."""
    (out_dir / "spm.model").write_bytes(proto)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    common.write_text(out_dir / "spm.vocab", "".join(
        f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size())))
    return sp


def normalize(tok: Any, text: str) -> str:
    """`text` as the base tokenizer's normalizer sees it (e.g. lowercased, accents stripped for uncased BERT)."""
    normalizer = tok.backend_tokenizer.normalizer
    return normalizer.normalize_str(text) if normalizer is not None else text


def word_counts(tok: Any, texts: Iterable[str], only: Collection[str] | None = None) -> Counter[str]:
    r"""Normalised word counts, text by text; `\w+` runs match where a single_word AddedToken can match.
    Given `only`, other words are not counted, so the Counter stays as small as that set."""
    counts: Counter[str] = Counter()
    for text in texts:
        words = re.findall(r"\w+", normalize(tok, text))
        counts.update(words if only is None else [w for w in words if w in only])
    return counts


def piece_words(pieces: list[str], tok: Any) -> set[str]:
    """The whole words among spm `pieces` (those with the word-start marker), normalised as `tok` does."""
    return {normalize(tok, p[1:]) for p in pieces if p.startswith("▁")}


def select_new_tokens(
    pieces: list[str], counts: Counter[str], tok: Any, max_new: int, min_freq: int
) -> dict[str, list[int]]:
    """Whole-word spm pieces the base splits into 2+ known sub-tokens, most frequent first -> their base ids."""
    candidates = {}
    for word in piece_words(pieces, tok):
        if not (word.isalpha() and len(word) >= MIN_WORD_CHARS and counts[word] >= min_freq):
            continue
        ids = tok(word, add_special_tokens=False)["input_ids"]
        if len(ids) >= 2 and tok.unk_token_id not in ids:  # an UNK row is no useful initialisation
            candidates[word] = ids
    ranked = sorted(candidates, key=lambda w: (-counts[w], w))[:max_new]
    return {word: candidates[word] for word in ranked}


def extend(tok: Any, new_tokens: dict[str, list[int]]) -> Any:
    """Add each word as a token that matches only a whole word of the normalised text."""
    added = tok.add_tokens([AddedToken(w, single_word=True, normalized=True) for w in new_tokens])
    if added != len(new_tokens):
        raise ValueError(f"only {added}/{len(new_tokens)} new tokens were added: some were already in the vocab")
    return tok


def spm_to_hf(model_file: Path, model_max_length: int) -> PreTrainedTokenizerFast:
    """The SentencePiece model as an HF fast tokenizer (same pieces and ids) with [CLS] x [SEP] framing."""
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    vocab = [(p.piece, p.score) for p in proto.pieces]
    if vocab[1][0] != "[UNK]":
        raise ValueError(f"{model_file}: expected [UNK] at id 1; retrain it with this stage")
    if proto.trainer_spec.model_type == sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
        model = models.Unigram(vocab, unk_id=1, byte_fallback=False)
    else:  # spm BPE pieces are in merge order (score = -rank): the merges follow from the scores
        ids = {piece: i for i, (piece, _) in enumerate(vocab)}
        model = models.BPE(ids, generate_merges(ids, vocab), unk_token="[UNK]", fuse_unk=True)
    backend = Tokenizer(model)
    # spm's own normalisation: its NFKC(+casefold) charsmap, outer spaces stripped, runs squeezed
    charsmap = normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap)
    squeeze = normalizers.Replace(Regex(" {2,}"), " ")
    backend.normalizer = normalizers.Sequence([charsmap, normalizers.Strip(), squeeze])
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=model_max_length,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"], **SPECIALS,  # what BERT takes
    )


def build(params: TokenizerParams, sp: Any, base: Any, train_texts: Iterable[str], spm_file: Path) -> tuple[Any, dict]:
    """The output tokenizer and its new tokens: `base` extended in place, or one made from `spm_file`."""
    if params.mode == "scratch":
        return spm_to_hf(spm_file, base.model_max_length), {}
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    counts = word_counts(base, train_texts, only=piece_words(pieces, base))  # no other word can be selected
    new_tokens = select_new_tokens(pieces, counts, base, params.max_new_tokens, params.min_frequency)
    return extend(base, new_tokens), new_tokens


def length_stats(tok: Any, texts: Iterable[str]) -> dict[str, float]:
    """Mean tokens per text (with [CLS]/[SEP], untruncated) and the share a 128-token model would cut."""
    count = total = over = 0
    batches = iter(texts)
    while batch := list(itertools.islice(batches, LENGTH_BATCH)):  # a batch at a time: encodings are large
        lengths = [len(ids) for ids in tok(batch, add_special_tokens=True)["input_ids"]]
        count += len(lengths)
        total += sum(lengths)
        over += sum(n > TYPICAL_MAX_LENGTH for n in lengths)
    return {
        "mean_tokens": round(total / count, 2),
        f"share_over_{TYPICAL_MAX_LENGTH}": round(over / count, 4),
    }


def run(
    params: TokenizerParams,
    model_name: str,
    seed: int,
    train_path: Path = common.ROOT / "data/prepare/train.jsonl",
    val_path: Path = common.ROOT / "data/prepare/val.jsonl",
    out_dir: Path = common.ROOT / "models/tokenizer",
    metrics_path: Path = common.ROOT / "metrics/tokenizer.json",
) -> dict[str, Any]:
    """Train SentencePiece on train, build the extended or scratch tokenizer, write it and its metrics."""
    train_texts, val_texts = SplitTexts(train_path), SplitTexts(val_path)
    base = AutoTokenizer.from_pretrained(common.resolve_model_name(model_name))
    before = length_stats(base, val_texts)
    lowercase = normalize(base, "A") == "a"  # spm case-folds iff the base does, so pieces match its words
    with common.atomic_dir(out_dir) as tmp:
        sp = write_spm(train_spm(train_texts, params, lowercase, seed), tmp)
        tok, new_tokens = build(params, sp, base, train_texts, tmp / "spm.model")
        save_tokenizer(tok, tmp)
        meta = {"mode": params.mode, "base_model": model_name, "new_tokens": new_tokens,
                "spm_vocab_size": sp.get_piece_size(), "model_type": params.model_type,
                "params": common.as_dict(params), "seed": seed}
        common.write_json(tmp / "tokenizer_meta.json", meta)
        metrics = {"mode": params.mode, "spm_vocab_size": sp.get_piece_size(), "vocab_size": len(tok),
                   "tokens_added": len(new_tokens), "val_before": before,
                   "val_after": length_stats(tok, val_texts)}
    common.write_json(metrics_path, metrics)
    print(f"wrote {out_dir} ({len(tok)} tokens; {len(new_tokens)} added, e.g. {list(new_tokens)[:8]})")
    print(f"wrote {metrics_path}: {metrics}")
    return metrics


def main() -> None:
    model_name = common.check_tracked_model(load_model_name(), "model.name")
    run(common.load_section(TokenizerParams, "tokenizer"), model_name, common.load_seed())


if __name__ == "__main__":
    cli("tokenizer", main)

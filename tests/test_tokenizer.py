"""Tests for stages/tokenizer.py on a tiny local BERT tokenizer and an inline corpus."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from stages import common
from stages import tokenizer as stage
from tests.tiny_bert import build_tiny_bert

# The base knows everyday words (and "medication"); drug and symptom names split into characters.
BASE_CORPUS = ["the medication gave me a bad day and i was tired but it helped with my pain"]
# Train frequencies: sertraline 12, insomnia 9, nausea 7, migraine 4 (< min_frequency 5), medication 13.
TRAIN = (
    ["Sertraline gave me insomnia and nausea, but the medication helped."] * 7
    + ["My insomnia was bad with sertraline."] * 2
    + ["Sertraline and the medication: no migraine, a good day."] * 3
    + ["I was tired, the medication helped."] * 3
    + ["Pain and migraine."]
)
# A word that only val contains, often enough that a tokenizer trained on val would learn it.
VAL = ["Gabapentin gabapentin gabapentin, then insomnia."] * 20
# BPE here: spm 0.2's unigram seeding finds almost no whole-word pieces in a few dozen repetitive
# sentences (it does on the real 510 reviews); the scratch tests cover unigram too.
PARAMS = stage.TokenizerParams(mode="extend", vocab_size=300, model_type="bpe", max_new_tokens=10, min_frequency=5)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("base"), BASE_CORPUS)


@pytest.fixture()
def base(base_dir: Path):
    return AutoTokenizer.from_pretrained(base_dir)


def run_stage(tmp_path: Path, base_dir: Path, params: stage.TokenizerParams = PARAMS, name: str = "out") -> dict:
    data = tmp_path / "data"
    for split, texts in (("train", TRAIN), ("val", VAL)):
        rows = [{"id": str(i), "text": t, "label": "a"} for i, t in enumerate(texts)]
        common.write_jsonl(data / f"{split}.jsonl", rows)
    return stage.run(params, str(base_dir), 42, data / "train.jsonl", data / "val.jsonl",
                     tmp_path / name / "tokenizer", tmp_path / name / "tokenizer.json")


def test_word_counts_follow_the_base_normalizer(base) -> None:
    counts = stage.word_counts(base, ["Insomnia, INSOMNIA!", "insomnia's insomniac"])
    assert counts["insomnia"] == 3 and counts["insomniac"] == 1


def test_candidates_ranked_by_frequency_then_alphabet_and_capped(base) -> None:
    counts = Counter({"zeta": 9, "beta": 7, "alpha": 7, "gamma": 5, "delta": 2})
    pieces = ["▁" + w for w in counts]
    assert list(stage.select_new_tokens(pieces, counts, base, 3, 5)) == ["zeta", "alpha", "beta"]
    assert list(stage.select_new_tokens(pieces, counts, base, 10, 5)) == ["zeta", "alpha", "beta", "gamma"]


def test_only_whole_alphabetic_words_the_base_splits_are_candidates(base) -> None:
    counts = Counter({"medication": 50, "nausea": 50, "ab": 50, "abc1": 50, "lupus": 50})
    pieces = ["▁medication", "▁Nausea", "▁ab", "▁abc1", "lupus"]  # "lupus" lacks the word-start marker
    assert list(stage.select_new_tokens(pieces, counts, base, 10, 5)) == ["nausea"]


def test_new_token_sub_ids_decode_back_to_the_word(base) -> None:
    counts = Counter({"sertraline": 12, "insomnia": 9})
    new = stage.select_new_tokens(["▁sertraline", "▁insomnia"], counts, base, 10, 5)
    assert {w: base.decode(ids).replace(" ", "") for w, ids in new.items()} == {w: w for w in new}
    assert all(len(ids) >= 2 for ids in new.values())


def test_added_tokens_match_whole_words_only_after_reload(base, tmp_path: Path) -> None:
    stage.extend(base, {"insomnia": base("insomnia", add_special_tokens=False)["input_ids"]})
    base.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok.tokenize("Insomnia, again.")[0] == "insomnia"
    assert "insomnia" not in tok.tokenize("insomniac preinsomnia insomnias")


def test_sentencepiece_learns_from_train_only(base_dir: Path, tmp_path: Path) -> None:
    run_stage(tmp_path, base_dir)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "out/tokenizer/spm.model"))
    assert sp.piece_to_id("▁gabapentin") == sp.unk_id()
    # The check has teeth: the same trainer fed val too does learn the word.
    leaky = spm.SentencePieceProcessor(model_proto=stage.train_spm(TRAIN + VAL, PARAMS, True, 42))
    assert leaky.piece_to_id("▁gabapentin") != leaky.unk_id()


def test_extend_run_adds_frequent_split_words(base_dir: Path, tmp_path: Path) -> None:
    metrics = run_stage(tmp_path, base_dir)
    meta = common.read_json(tmp_path / "out/tokenizer/tokenizer_meta.json")
    assert list(meta["new_tokens"]) == ["sertraline", "insomnia", "nausea"]
    assert meta["mode"] == "extend" and meta["base_model"] == str(base_dir)
    tok = AutoTokenizer.from_pretrained(tmp_path / "out/tokenizer")
    assert metrics["tokens_added"] == 3 and metrics["vocab_size"] == len(tok)
    assert tok.tokenize("Sertraline nausea") == ["sertraline", "nausea"]
    assert metrics["val_after"]["mean_tokens"] < metrics["val_before"]["mean_tokens"]
    assert common.read_json(tmp_path / "out/tokenizer.json") == metrics


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_scratch_tokenizer_is_the_sentencepiece_model_with_bert_framing(
    base_dir: Path, tmp_path: Path, model_type: str
) -> None:
    params = dataclasses.replace(PARAMS, mode="scratch", model_type=model_type)
    metrics = run_stage(tmp_path, base_dir, params)
    out = tmp_path / "out/tokenizer"
    tok = AutoTokenizer.from_pretrained(out)
    sp = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    specials = [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id]
    assert specials == [0, 1, 2, 3, 4] and len(tok) == sp.get_piece_size() == metrics["vocab_size"]
    text = " Sertraline gave me  insomnia, then nausea.  "  # spm strips and squeezes spaces
    ids = tok(text)["input_ids"]
    assert ids == [tok.cls_token_id] + sp.encode(text) + [tok.sep_token_id]
    assert tok.decode(ids, skip_special_tokens=True) == "sertraline gave me insomnia, then nausea."
    assert common.read_json(out / "tokenizer_meta.json")["new_tokens"] == {}


def test_scratch_tokenizer_feeds_a_bert_of_its_vocab_size(base_dir: Path, tmp_path: Path) -> None:
    run_stage(tmp_path, base_dir, dataclasses.replace(PARAMS, mode="scratch"))
    tok = AutoTokenizer.from_pretrained(tmp_path / "out/tokenizer")
    config = BertConfig.from_pretrained(base_dir, vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    batch = tok(TRAIN[:3], padding=True, return_tensors="pt")
    assert BertForSequenceClassification(config)(**batch).logits.shape == (3, 3)


def test_two_runs_write_identical_files(base_dir: Path, tmp_path: Path) -> None:
    run_stage(tmp_path, base_dir, name="a")
    run_stage(tmp_path, base_dir, name="b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) >= 5
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_unknown_tokenizer_key_is_rejected_and_model_reads_name_only(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("model: {name: bert-base-uncased, max_length: 64}\n"
                    "tokenizer: {mode: extend, vocab_sise: 10}\n")
    with pytest.raises(common.ParamsError, match="vocab_sise"):
        common.load_section(stage.TokenizerParams, "tokenizer", path)
    assert stage.load_model_name(path) == "bert-base-uncased"


def test_failed_run_leaves_no_output(base_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data/train.jsonl").write_text('{"id": "0", "label": "a"}\n')
    (tmp_path / "data/val.jsonl").write_text('{"id": "0", "text": "x", "label": "a"}\n')
    with pytest.raises(ValueError, match=r"train.jsonl row 1: missing key\(s\) \['text'\]"):
        stage.run(PARAMS, str(base_dir), 42, tmp_path / "data/train.jsonl", tmp_path / "data/val.jsonl",
                  tmp_path / "tok", tmp_path / "m.json")
    assert not (tmp_path / "tok").exists() and not (tmp_path / "m.json").exists()


def test_sample_draws_a_seeded_subset_in_corpus_order() -> None:
    texts = [f"t{i:03d}" for i in range(200)]
    drawn = list(stage.sample(texts, 200, 20, seed=1))
    assert len(drawn) == 20 and drawn == sorted(drawn) and set(drawn) <= set(texts)
    assert drawn == list(stage.sample(texts, 200, 20, seed=1)) != list(stage.sample(texts, 200, 20, seed=2))
    assert list(stage.sample(texts, 200, 200, seed=1)) == texts  # within the budget: every text, as given


def test_train_split_over_the_byte_budget_is_sampled_for_sentencepiece() -> None:
    full = stage.train_spm(TRAIN, PARAMS, True, 42)
    assert stage.train_spm(TRAIN, PARAMS, True, 42, max_bytes=10**6) == full
    sampled = stage.train_spm(TRAIN, PARAMS, True, 42, max_bytes=300)
    assert sampled != full and sampled == stage.train_spm(TRAIN, PARAMS, True, 42, max_bytes=300)


def test_a_streamed_split_file_trains_the_same_model_as_a_list(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    common.write_jsonl(path, [{"id": str(i), "text": t, "label": "a"} for i, t in enumerate(TRAIN)])
    assert list(stage.SplitTexts(path)) == TRAIN
    assert stage.train_spm(stage.SplitTexts(path), PARAMS, True, 42) == stage.train_spm(TRAIN, PARAMS, True, 42)


def test_word_counts_limited_to_candidates_count_them_the_same(base) -> None:
    full = stage.word_counts(base, TRAIN)
    only = stage.word_counts(base, TRAIN, only={"insomnia", "nausea"})
    assert only == {"insomnia": full["insomnia"], "nausea": full["nausea"]} == {"insomnia": 9, "nausea": 7}


def test_length_stats_do_not_depend_on_the_batch_size(base, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = stage.length_stats(base, TRAIN + VAL)
    monkeypatch.setattr(stage, "LENGTH_BATCH", 3)
    assert stage.length_stats(base, iter(TRAIN + VAL)) == whole


@pytest.mark.parametrize("offline_first", [True, False])
def test_the_stage_writes_the_same_bytes_online_and_under_hf_hub_offline(base_dir: Path, tmp_path: Path,
                                                                         monkeypatch, offline_first: bool) -> None:
    """transformers forces local_files_only=True in offline mode (`make` sets HF_HUB_OFFLINE=1) and used
    to write it into tokenizer_config.json, so a `dvc repro` outside make changed models/tokenizer."""
    import transformers.tokenization_utils_base as tub

    for name, offline in (("a", offline_first), ("b", not offline_first)):
        monkeypatch.setattr(tub, "is_offline_mode", lambda offline=offline: offline)
        run_stage(tmp_path, base_dir, name=name)
    for rel in ("tokenizer/tokenizer_config.json", "tokenizer/tokenizer.json"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert "local_files_only" not in (tmp_path / "a/tokenizer/tokenizer_config.json").read_text()


def test_save_tokenizer_drops_the_load_time_flag_train_would_copy_into_models_train(base_dir: Path,
                                                                                       tmp_path: Path) -> None:
    from stages.encoder import save_tokenizer

    for name, local in (("local", True), ("hub", False)):
        save_tokenizer(AutoTokenizer.from_pretrained(base_dir, local_files_only=local), tmp_path / name)
    assert ((tmp_path / "local/tokenizer_config.json").read_bytes()
            == (tmp_path / "hub/tokenizer_config.json").read_bytes())

import json

import pytest
import torch
from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

from stages import common
from stages.encoder import ModelParams
from stages.pretrain import PretrainParams, history, masked_lm_loss, run
from stages.fit import build_model, pretrained_encoder
from tiny_bert import build_tiny_bert

WORDS = {"neg": "awful pain nausea terrible", "neu": "okay average mild fine", "pos": "great relief wonderful helped"}


def _rows(n: int, prefix: str) -> list[dict]:
    return [{"id": f"{prefix}-{lab}-{i}", "text": f"the {WORDS[lab]} drug metformin {'very ' * (i % 3)}case {i}",
             "label": lab} for lab in WORDS for i in range(n)]


@pytest.fixture
def root(tmp_path):
    """What the pretrain stage reads, around a tiny local BERT saved without an MLM head (as the bundled
    sentence-transformers MiniLM is), with one domain word added by the extended tokenizer."""
    base = build_tiny_bert(tmp_path / "base", list(WORDS.values()), num_labels=3)  # no "metformin"
    common.write_jsonl(tmp_path / "data/prepare/train.jsonl", _rows(8, "train"))
    common.write_jsonl(tmp_path / "data/prepare/val.jsonl", _rows(3, "val"))
    tokenizer = AutoTokenizer.from_pretrained(base)
    sub_ids = tokenizer("metformin", add_special_tokens=False)["input_ids"]
    assert len(sub_ids) > 1 and tokenizer.add_tokens(["metformin"]) == 1
    tokenizer.save_pretrained(tmp_path / "models/tokenizer")
    meta = {"mode": "extend", "base_model": str(base), "new_tokens": {"metformin": sub_ids}}
    common.write_json(tmp_path / "models/tokenizer/tokenizer_meta.json", meta)
    return tmp_path


def _params(**overrides) -> PretrainParams:
    p = dict(enabled=True, epochs=3, batch_size=8, learning_rate=5e-3, weight_decay=0.01, warmup_ratio=0.1,
             mask_probability=0.15, device="cpu")
    return PretrainParams(**{**p, **overrides})


def _run(root, **overrides) -> dict:
    return run(_params(**overrides), str(root / "base"), 32, "head", seed=7, root=root)


def test_masked_lm_trains_the_encoder_and_lowers_the_val_loss(root):
    metrics = _run(root)
    assert metrics["val_mlm_loss_after"] < metrics["val_mlm_loss_before"] - 0.2
    rows = json.loads((root / "plots/pretrain/history.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["val_loss"] == metrics["val_mlm_loss_after"]
    assert json.loads((root / "metrics/pretrain.json").read_text()) == metrics
    base = AutoModel.from_pretrained(root / "base")
    tuned = AutoModel.from_pretrained(root / "models/pretrain")
    tokenizer = AutoTokenizer.from_pretrained(root / "models/tokenizer")
    new_id = tokenizer.convert_tokens_to_ids("metformin")
    sub_ids = common.read_json(root / "models/tokenizer/tokenizer_meta.json")["new_tokens"]["metformin"]
    start = base.get_input_embeddings().weight[sub_ids].mean(0)
    assert tuned.get_input_embeddings().weight.shape[0] == len(tokenizer)
    # The new token's row was trained away from its sub-token-mean start; the pooler (which the
    # masked-LM model lacks) is the base checkpoint's, not a random one.
    assert not torch.allclose(tuned.get_input_embeddings().weight[new_id], start)
    torch.testing.assert_close(tuned.pooler.dense.weight, base.pooler.dense.weight)
    assert not torch.allclose(tuned.encoder.layer[0].attention.self.query.weight,
                              base.encoder.layer[0].attention.self.query.weight)


def test_same_seed_gives_the_same_encoder(root, tmp_path_factory):
    first = _run(root, epochs=1)
    weights = AutoModel.from_pretrained(root / "models/pretrain").state_dict()
    assert _run(root, epochs=1) == first
    for key, value in AutoModel.from_pretrained(root / "models/pretrain").state_dict().items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0)


def test_train_starts_from_the_pretrained_encoder_with_a_seeded_head(root):
    _run(root, epochs=1)
    tokenizer = AutoTokenizer.from_pretrained(root / "models/tokenizer")
    meta = common.read_json(root / "models/tokenizer/tokenizer_meta.json")
    pretrained = pretrained_encoder(root / "models/pretrain", str(root / "base"), tokenizer)
    assert pretrained == root / "models/pretrain"
    params = ModelParams(str(root / "base"), 32, "head", 0, True)
    model = build_model(tokenizer, meta, params, ["neg", "neu", "pos"], seed=3, pretrained=pretrained)
    again = build_model(tokenizer, meta, params, ["neg", "neu", "pos"], seed=3, pretrained=pretrained)
    from_base = build_model(tokenizer, meta, params, ["neg", "neu", "pos"], seed=3)
    encoder = AutoModel.from_pretrained(pretrained)
    torch.testing.assert_close(model.bert.encoder.layer[0].output.dense.weight,
                               encoder.encoder.layer[0].output.dense.weight)
    assert not torch.allclose(model.bert.encoder.layer[0].output.dense.weight,
                              from_base.bert.encoder.layer[0].output.dense.weight)
    torch.testing.assert_close(model.classifier.weight, again.classifier.weight)


def test_a_stale_pretrained_encoder_fails_with_the_fix(root):
    _run(root, epochs=1)
    tokenizer = AutoTokenizer.from_pretrained(root / "base")  # the tokenizer without the added token
    with pytest.raises(ValueError, match="dvc repro"):
        pretrained_encoder(root / "models/pretrain", str(root / "base"), tokenizer)


def test_disabled_writes_only_its_meta_and_train_starts_from_the_base_model(root):
    assert _run(root, enabled=False) == {"enabled": False}
    assert sorted(p.name for p in (root / "models/pretrain").iterdir()) == ["pretrain_meta.json"]
    tokenizer = AutoTokenizer.from_pretrained(root / "models/tokenizer")
    assert pretrained_encoder(root / "models/pretrain", str(root / "base"), tokenizer) is None


def test_val_loss_is_per_masked_token_whatever_the_batch_size(root):
    from transformers import DataCollatorForLanguageModeling

    tokenizer = AutoTokenizer.from_pretrained(root / "base")
    texts = [r["text"] for r in _rows(3, "v")]
    masked = DataCollatorForLanguageModeling(tokenizer, seed=0)([dict(tokenizer(t)) for t in texts])
    model = AutoModelForMaskedLM.from_pretrained(root / "base")
    losses = [masked_lm_loss(model, masked, bs) for bs in (1, 4, 9)]
    assert losses == pytest.approx([losses[0]] * 3, rel=1e-5)
    logits = model(input_ids=masked["input_ids"], attention_mask=masked["attention_mask"],
                   token_type_ids=masked["token_type_ids"]).logits
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), masked["labels"].flatten(), ignore_index=-100)
    assert losses[0] == pytest.approx(expected.item(), rel=1e-5)


def test_history_pairs_each_epoch_train_loss_with_its_val_loss():
    logs = [{"loss": 3.0, "epoch": 1.0}, {"loss": 2.0, "epoch": 2.0}, {"train_runtime": 1.0, "epoch": 2.0}]
    assert history(logs, [2.5, 2.1]) == [{"epoch": 1, "train_loss": 3.0, "val_loss": 2.5},
                                         {"epoch": 2, "train_loss": 2.0, "val_loss": 2.1}]


@pytest.mark.parametrize("key, value", [("mask_probability", 0.0), ("mask_probability", 1.0), ("epochs", 0),
                                        ("learning_rate", 0.0)])
def test_params_out_of_range_fail_at_load(key, value):
    with pytest.raises(common.ParamsError, match=f"pretrain.{key}"):
        _params(**{key: value})


def test_training_loss_scores_masked_positions_like_the_models_own_mlm_loss(root):
    from transformers import DataCollatorForLanguageModeling

    from stages.pretrain import MaskedLMTrainer

    tokenizer = AutoTokenizer.from_pretrained(root / "base")
    batch = DataCollatorForLanguageModeling(tokenizer, seed=1)([dict(tokenizer(r["text"])) for r in _rows(2, "t")])
    model = AutoModelForMaskedLM.from_pretrained(root / "base")
    trainer = MaskedLMTrainer.__new__(MaskedLMTrainer)  # compute_loss needs no Trainer state
    own = model(**batch).loss
    torch.testing.assert_close(trainer.compute_loss(model, batch), own)


def test_an_mlm_head_of_another_name_scores_every_position_with_the_same_loss():
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    from stages.pretrain import MaskedLMTrainer

    torch.manual_seed(0)
    model = DistilBertForMaskedLM(DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32)).eval()
    ids = torch.randint(5, 50, (3, 7))
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    trainer = MaskedLMTrainer.__new__(MaskedLMTrainer)
    torch.testing.assert_close(trainer.compute_loss(model, batch), model(**batch).loss)


def test_both_stages_take_the_same_device_settings(monkeypatch):
    from stages.encoder import device_args

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_args("auto", "pretrain.device") == {"full_determinism": True, "use_cpu": True, "bf16": False,
                                                      "fp16": False}
    with pytest.raises(RuntimeError, match="set pretrain.device: auto or cpu"):
        device_args("cuda", "pretrain.device")

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from stages import common
from stages.focal_loss import LossParams
from stages.swa import VAL_LOSS, SWACallback, SwaParams, build_lr_scheduler, evaluate_best_and_swa
from stages.encoder import ModelParams, init_new_token_embeddings
from stages.fit import build_model
from stages.train import TrainParams, run
from stages.trainer import FocalTrainer, history_from_logs, make_compute_metrics, training_args
from tiny_bert import build_tiny_bert

LABELS = ["neg", "neu", "pos"]
WORDS = {"neg": "awful pain nausea terrible", "neu": "okay average mild fine", "pos": "great relief wonderful helped"}


def _rows(n_per_class: int, prefix: str) -> list[dict]:
    return [
        {"id": f"{prefix}-{lab}-{i}", "text": f"{WORDS[lab]} {'very ' * (i % 3)}case {i}", "label": lab}
        for lab in LABELS
        for i in range(n_per_class)
    ]


@pytest.fixture
def tiny_root(tmp_path):
    return make_tiny_root(tmp_path)


def make_tiny_root(tmp_path, **bert_kwargs):
    """A repo-shaped dir with what the train stage reads, around a tiny local BERT."""
    corpus = [r["text"] for r in _rows(8, "x")]
    base = build_tiny_bert(tmp_path / "base", corpus, num_labels=3, **bert_kwargs)
    common.write_json(tmp_path / "data/prepare/labels.json", LABELS)
    common.write_jsonl(tmp_path / "data/prepare/val.jsonl", _rows(4, "val"))
    common.write_jsonl(tmp_path / "data/augment/train.jsonl", _rows(8, "train"))
    common.write_json(tmp_path / "data/alpha/alpha.json", {"labels": LABELS, "alpha": [0.3, 0.4, 0.3]})
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp_path / "models/tokenizer")
    meta = {"mode": "extend", "base_model": str(base), "new_tokens": {}}
    common.write_json(tmp_path / "models/tokenizer/tokenizer_meta.json", meta)
    common.write_json(tmp_path / "models/pretrain/pretrain_meta.json", {"enabled": False})  # pretrain stage off
    return tmp_path


def _params(root, **train_overrides):
    swa = SwaParams(enabled=True, start_epoch=2, lr=1e-3, keep="swa")
    train = dict(
        max_epochs=3, batch_size=8, learning_rate=5e-3, weight_decay=0.01, warmup_ratio=0.1,
        early_stopping_patience=3, swa=swa, device="cpu", nproc=1, grad_accum_steps=1, folds=1,
        patience_from="swa_start", select_metric="ce_loss", refit=False, group_by_length=False,
        temperature_scaling=False, sub_batches=2,
    )
    train.update(train_overrides)
    return 7, ModelParams(str(root / "base"), 32, "head", 0, True), LossParams(2.0, 0.1, None), TrainParams(**train)


def test_run_saves_swa_model_metrics_and_history(tiny_root):
    metrics = run(*_params(tiny_root), root=tiny_root)
    assert metrics["kept"] == "swa" and metrics["swa"]["snapshots"] == 2  # epochs 2 and 3
    assert metrics["epochs_run"] == 3 and metrics["stop_reason"] == "max_epochs"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_root / "models/train")
    assert model.config.id2label == dict(enumerate(LABELS))
    pipeline = json.loads((tiny_root / "models/train/pipeline.json").read_text())
    assert pipeline["seed"] == 7 and pipeline["train"]["swa"]["keep"] == "swa" and pipeline["labels"] == LABELS
    history = json.loads((tiny_root / "plots/train/history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    # The post-training evaluations of the best and SWA models must not overwrite epoch 3.
    assert history[-1]["val_loss"] != metrics["swa"]["val_loss"]
    assert {"train_loss", "val_loss", "val_ce_loss", "val_macro_f1", "learning_rate"} <= set(history[0])
    # The trainer runs our schedule: cosine after warmup in epoch 1, SWALR annealing to swa.lr
    # during swa.start_epoch (2), then constant swa.lr (Trainer's own linear decay would reach ~0).
    lrs = [h["learning_rate"] for h in history]
    assert 5e-3 > lrs[0] > lrs[1] > 1e-3 and lrs[2] == pytest.approx(1e-3, rel=1e-9)
    assert (tiny_root / "plots/train/history.png").read_bytes()[:4] == b"\x89PNG"
    assert not list((tiny_root / "models").glob("**/checkpoint-*"))  # checkpoints never land in outs


def test_temperature_is_fitted_on_the_heldout_rows_and_scales_what_the_classifier_predicts(tiny_root):
    from dataclasses import replace

    from stages.calibration import apply_temperature, fit_temperature
    from stages.classifier import Classifier

    metrics = run(*_params(tiny_root, temperature_scaling=True), root=tiny_root)
    heldout = json.loads((tiny_root / "models/train/heldout.json").read_text())
    y = np.array([LABELS.index(lab) for lab in heldout["labels"]])
    t = fit_temperature(np.array(heldout["probs"]), y)  # heldout.json keeps the unscaled probabilities
    assert metrics["heldout"]["temperature"] == pytest.approx(t) and t != pytest.approx(1.0, abs=1e-3)
    pipeline = json.loads((tiny_root / "models/train/pipeline.json").read_text())
    assert pipeline["temperature"] == metrics["heldout"]["temperature"]
    classifier = Classifier.load(tiny_root / "models/train", device="cpu")
    texts = [r["text"] for r in common.read_rows(tiny_root / "data/prepare/val.jsonl")]
    unscaled = replace(classifier, temperature=1.0).predict_proba(texts, batch_size=4)
    np.testing.assert_allclose(classifier.predict_proba(texts, batch_size=4), apply_temperature(unscaled, t), rtol=1e-9)


def test_same_seed_gives_same_metrics_on_cpu(tiny_root):
    first = run(*_params(tiny_root), root=tiny_root)
    second = run(*_params(tiny_root), root=tiny_root)
    for key in ("best", "swa"):
        assert first[key] == second[key]


def test_early_stopping_on_flat_validation_loss(tiny_root):
    # lr=1e-30 (and no SWA) is below float32 resolution of every weight: the val loss stays
    # exactly constant, so no epoch improves on the first.
    no_swa = SwaParams(enabled=False, start_epoch=2, lr=1e-3, keep="best")
    params = _params(tiny_root, learning_rate=1e-30, max_epochs=6, early_stopping_patience=2, swa=no_swa)
    metrics = run(*params, root=tiny_root)
    assert metrics["epochs_run"] == 3 and metrics["stop_reason"] == "early_stopping"
    assert metrics["swa"] is None and metrics["kept"] == "best"


def test_swa_average_equals_mean_of_snapshot_weights():
    model = torch.nn.Linear(3, 2)
    callback = SWACallback(start_epoch=2)
    snapshots = []
    for epoch in (1, 2, 3, 4):
        with torch.no_grad():
            model.weight.normal_()
        snapshots.append(model.weight.detach().clone())
        callback.on_epoch_end(None, SimpleNamespace(epoch=float(epoch)), None, model=model)
    assert callback.snapshots == 3
    want = torch.stack(snapshots[1:]).mean(0)
    torch.testing.assert_close(callback.averaged.module.weight, want)


def test_keep_decides_which_weights_stay_loaded():
    class FakeTrainer:  # evaluate() reports a loss equal to the single weight
        model = torch.nn.Linear(1, 1, bias=False)

        def evaluate(self):
            return {VAL_LOSS: self.model.weight.item()}

    trainer = FakeTrainer()
    callback = SWACallback(start_epoch=1)
    for w in (4.0, 2.0):
        trainer.model.weight.data.fill_(w)
        callback.update(trainer.model)
    trainer.model.weight.data.fill_(1.0)  # the restored "best" model
    best, swa, kept = evaluate_best_and_swa(trainer, callback, keep="auto")
    assert (best[VAL_LOSS], swa[VAL_LOSS], kept) == (1.0, 3.0, "best")
    assert trainer.model.weight.item() == 1.0
    _, _, kept = evaluate_best_and_swa(trainer, callback, keep="swa")
    assert kept == "swa" and trainer.model.weight.item() == 3.0


@pytest.mark.parametrize(("patience_from", "epochs", "snapshots"), [("swa_start", 4, 2), ("first_epoch", 3, 1)])
def test_patience_counted_from_swa_start_cannot_stop_before_its_snapshots(tiny_root, patience_from, epochs,
                                                                         snapshots):
    # A flat validation loss (lr 1e-30): no epoch after the first improves. Counting from epoch 1,
    # patience 2 stops at epoch 3 with one snapshot (SWA from epoch 3); from swa.start_epoch, epochs 3
    # and 4 count, so SWA has averaged the 2 snapshots that patience asks for.
    swa = SwaParams(enabled=True, start_epoch=3, lr=1e-30, keep="swa")
    params = _params(tiny_root, learning_rate=1e-30, max_epochs=8, early_stopping_patience=2, swa=swa,
                     patience_from=patience_from)
    metrics = run(*params, root=tiny_root)
    assert (metrics["epochs_run"], metrics["swa"]["snapshots"]) == (epochs, snapshots)
    assert metrics["stop_reason"] == "early_stopping" and metrics["best"]["epoch"] == 1


@pytest.mark.parametrize(("select_metric", "kept"), [("macro_f1", "swa"), ("ce_loss", "best"),
                                                     ("focal_loss", "best")])
def test_keep_auto_follows_the_selection_metric(select_metric, kept):
    class FakeTrainer:  # the "best" checkpoint (weight 1) has the lower losses, SWA (weight 3) the higher F1
        model = torch.nn.Linear(1, 1, bias=False)

        def evaluate(self):
            w = self.model.weight.item()
            return {VAL_LOSS: w, "eval_ce_loss": w / 2, "eval_macro_f1": w / 10}

    trainer, callback = FakeTrainer(), SWACallback(start_epoch=1)
    for w in (4.0, 2.0):
        trainer.model.weight.data.fill_(w)
        callback.update(trainer.model)
    trainer.model.weight.data.fill_(1.0)
    assert evaluate_best_and_swa(trainer, callback, "auto", select_metric)[2] == kept
    assert trainer.model.weight.item() == {"swa": 3.0, "best": 1.0}[kept]


def test_keep_auto_keeps_swa_on_a_tie():
    class FakeTrainer:
        model = torch.nn.Linear(1, 1, bias=False)

        def evaluate(self):
            return {VAL_LOSS: 0.5, "eval_ce_loss": 0.5, "eval_macro_f1": 0.5}

    trainer, callback = FakeTrainer(), SWACallback(start_epoch=1)
    callback.update(trainer.model)
    for metric in ("macro_f1", "ce_loss", "focal_loss"):
        assert evaluate_best_and_swa(trainer, callback, "auto", metric)[2] == "swa"


def test_lr_cosine_then_constant_swa_lr():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    swa = SwaParams(enabled=True, start_epoch=3, lr=0.1, keep="swa")
    sched = build_lr_scheduler(opt, total_steps=40, steps_per_epoch=8, warmup_ratio=0.1, swa=swa)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[4] == pytest.approx(1.0)  # linear warmup over 4 steps
    assert all(a >= b for a, b in zip(lrs[4:16], lrs[5:16]))  # cosine decay before SWA
    assert lrs[24:] == pytest.approx([0.1] * 16)  # annealed to swa.lr within epoch 3, then flat


def test_new_token_embeddings_start_as_subtoken_mean(tmp_path):
    base = build_tiny_bert(tmp_path / "base", ["alpha beta"], num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base)
    sub_ids = tokenizer("zolpidem", add_special_tokens=False)["input_ids"]
    assert len(sub_ids) > 1
    tokenizer.add_tokens(["zolpidem"])
    model.resize_token_embeddings(len(tokenizer))
    init_new_token_embeddings(model, tokenizer, {"zolpidem": sub_ids})
    weight = model.get_input_embeddings().weight
    torch.testing.assert_close(weight[tokenizer.convert_tokens_to_ids("zolpidem")], weight[sub_ids].mean(0))


def test_history_merges_train_and_eval_logs_per_epoch():
    logs = [
        {"loss": 1.0, "learning_rate": 0.1, "epoch": 1.0},
        {VAL_LOSS: 0.9, "eval_ce_loss": 1.1, "eval_accuracy": 0.5, "eval_macro_f1": 0.4, "epoch": 1.0},
        {"loss": 0.5, "learning_rate": 0.05, "epoch": 2.0},
        {VAL_LOSS: 0.8, "eval_ce_loss": 1.0, "eval_accuracy": 0.6, "eval_macro_f1": 0.5, "epoch": 2.0},
        {"train_runtime": 3.0, "epoch": 2.0},
    ]
    history = history_from_logs(logs)
    assert [h["epoch"] for h in history] == [1, 2] and history[1]["val_loss"] == 0.8
    assert history[0]["train_loss"] == 1.0 and history[0]["learning_rate"] == 0.1


@pytest.mark.parametrize("mode", ["extend", "scratch"])
def test_run_on_the_tokenizer_stage_output(tiny_root, mode):
    """The real tokenizer stage feeds train: extend resizes embeddings, scratch builds a fresh model."""
    from stages.tokenizer import TokenizerParams, run as run_tokenizer

    rows = common.read_jsonl(tiny_root / "data/augment/train.jsonl")
    for row in rows:  # a domain word the tiny base vocab lacks, so extend has something to add
        row["text"] += " metformin"
    common.write_jsonl(tiny_root / "data/prepare/train.jsonl", rows)
    common.write_jsonl(tiny_root / "data/augment/train.jsonl", rows)
    tok_params = TokenizerParams(mode=mode, vocab_size=60, model_type="bpe", max_new_tokens=5, min_frequency=2)
    tok_metrics = run_tokenizer(
        tok_params, str(tiny_root / "base"), 7,
        tiny_root / "data/prepare/train.jsonl", tiny_root / "data/prepare/val.jsonl",
        tiny_root / "models/tokenizer", tiny_root / "m.json",
    )
    no_swa = SwaParams(enabled=False, start_epoch=2, lr=1e-3, keep="best")
    metrics = run(*_params(tiny_root, max_epochs=1, swa=no_swa), root=tiny_root)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_root / "models/train")
    tokenizer = AutoTokenizer.from_pretrained(tiny_root / "models/train")
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == tok_metrics["vocab_size"]
    if mode == "extend":
        assert tok_metrics["tokens_added"] > 0
    assert metrics["epochs_run"] == 1


def test_early_stop_before_swa_start_is_reported_not_silent(tiny_root, capsys):
    flat = SwaParams(enabled=True, start_epoch=5, lr=1e-3, keep="swa")
    params = _params(tiny_root, learning_rate=1e-30, max_epochs=6, early_stopping_patience=2, swa=flat,
                     patience_from="first_epoch")
    metrics = run(*params, root=tiny_root)
    assert metrics["epochs_run"] == 3 and metrics["kept"] == "best"
    assert metrics["swa"]["snapshots"] == 0 and "before train.swa.start_epoch=5" in metrics["swa"]["skipped"]
    assert "WARNING: SWA did nothing" in capsys.readouterr().out
    assert common.read_json(tiny_root / "metrics/train.json")["swa"] == metrics["swa"]


@pytest.mark.parametrize(("swa", "max_epochs", "match"), [
    (dict(start_epoch=1), 6, r"train.swa.start_epoch: 1 is out of range, allowed >= 2 \(epoch 1 is the warmup\)"),
    (dict(lr=0.0), 6, r"train.swa.lr: 0.0 is out of range, allowed > 0"),
    (dict(start_epoch=7), 6, r"start_epoch \(7\) must be <= train.max_epochs \(6\)"),
])
def test_swa_settings_that_would_silently_do_nothing_fail_at_load(swa, max_epochs, match):
    raw = {"max_epochs": max_epochs, "batch_size": 8, "learning_rate": 5e-5, "weight_decay": 0.01,
           "warmup_ratio": 0.1, "early_stopping_patience": 3, "device": "cpu", "nproc": 1, "grad_accum_steps": 1,
           "folds": 1, "patience_from": "swa_start", "select_metric": "ce_loss", "refit": False, "group_by_length": False,
           "temperature_scaling": False, "sub_batches": 1,
           "swa": {"enabled": True, "start_epoch": 3, "lr": 2e-5, "keep": "swa", **swa}}
    with pytest.raises(ValueError, match=match):
        common.parse_params(TrainParams, raw, "train")


def test_disabled_swa_may_start_after_the_last_epoch():
    swa = {"enabled": False, "start_epoch": 9, "lr": 2e-5, "keep": "best"}
    raw = {"max_epochs": 6, "batch_size": 8, "learning_rate": 5e-5, "weight_decay": 0.01, "warmup_ratio": 0.1,
           "early_stopping_patience": 3, "swa": swa, "device": "cpu", "nproc": 1, "grad_accum_steps": 1,
           "folds": 1, "patience_from": "swa_start", "select_metric": "ce_loss", "refit": False, "group_by_length": False,
           "temperature_scaling": False, "sub_batches": 1}
    assert common.parse_params(TrainParams, raw, "train").swa.start_epoch == 9


def test_validation_loss_is_the_alpha_weighted_mean_over_every_example():
    """compute_metrics scores all validation logits at once: split in two unequal parts, its focal loss is
    the parts' losses weighted by their alpha mass (its CE, by their size), not a mean of batch means."""
    from stages.focal_loss import focal_loss

    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(90, 3, generator=g) * 2, torch.randint(0, 3, (90,), generator=g)
    alpha = torch.tensor([0.38, 0.43, 0.19])
    metrics = make_compute_metrics(alpha, LossParams(2.0, 0.1, None))((logits.numpy(), labels.numpy()))
    parts = (slice(0, 30), slice(30, 90))
    focal = [focal_loss(logits[s], labels[s], alpha, 2.0, 0.1).item() for s in parts]
    mass = [alpha[labels[s]].sum().item() for s in parts]
    ce = [torch.nn.functional.cross_entropy(logits[s], labels[s]).item() for s in parts]
    assert metrics["focal_loss"] == pytest.approx((mass[0] * focal[0] + mass[1] * focal[1]) / sum(mass), rel=1e-6)
    assert metrics["focal_loss"] != pytest.approx(sum(focal) / 2, rel=1e-3)  # the mean of the two batch means
    assert metrics["ce_loss"] == pytest.approx((30 * ce[0] + 60 * ce[1]) / 90, rel=1e-6)
    assert metrics["accuracy"] == pytest.approx((logits.argmax(-1) == labels).double().mean().item())


def test_validation_macro_f1_equals_evaluates_when_a_class_is_never_predicted_and_another_absent():
    """train's early-stopping macro-F1 and evaluate's test macro-F1 are one definition: all classes count."""
    from stages.evaluate import classification_metrics

    # 4 classes: 1 is never predicted, 2 is predicted but absent from the labels, 3 appears nowhere.
    labels = torch.tensor([0, 0, 1, 1])
    preds = torch.tensor([0, 0, 0, 2])
    logits = torch.nn.functional.one_hot(preds, 4).float() * 5
    train_f1 = make_compute_metrics(torch.full((4,), 0.25), LossParams(0.0, 0.0, None))((logits.numpy(), labels.numpy()))
    test_f1 = classification_metrics(torch.softmax(logits, -1).numpy(), labels.numpy(), list("abcd"), ece_bins=2)
    # F1 per class: 0.8 (2 hits, 1 false positive), 0, 0, 0 -> mean over 4 classes, not over the 3 seen.
    assert train_f1["macro_f1"] == pytest.approx(0.2, abs=1e-12)
    assert test_f1["macro_f1"] == pytest.approx(train_f1["macro_f1"], abs=1e-12)


def test_trainer_validation_loss_is_the_same_for_any_eval_batch_size(tiny_root, tmp_path):
    seed, model_params, loss_params, train_params = _params(tiny_root)
    tokenizer = AutoTokenizer.from_pretrained(tiny_root / "base")
    from stages.fit import encode

    val = encode(common.read_rows(tiny_root / "data/prepare/val.jsonl"), tokenizer, {l: i for i, l in enumerate(LABELS)},
                 ModelParams(name="tiny", max_length=32, truncation="head", freeze_layers=0, cache_frozen=True))
    losses = []
    for eval_batch in (3, 5, 12):
        model = AutoModelForSequenceClassification.from_pretrained(tiny_root / "base")
        args = training_args(str(tmp_path / f"e{eval_batch}"), train_params, seed)
        args.per_device_eval_batch_size = eval_batch
        from transformers import DataCollatorWithPadding

        trainer = FocalTrainer(model=model, args=args, eval_dataset=val, data_collator=DataCollatorWithPadding(tokenizer),
                               compute_metrics=make_compute_metrics(torch.tensor([0.2, 0.5, 0.3]), loss_params),
                               alpha=torch.tensor([0.2, 0.5, 0.3]), loss_params=loss_params, train_params=train_params)
        losses.append(trainer.evaluate()[VAL_LOSS])
    assert losses == pytest.approx([losses[0]] * 3, rel=1e-5)


# One plain SGD step (lr 0.5, no momentum, no weight decay, no clipping) is linear in the gradient, so a
# wrong loss scale or normaliser moves the weights by a different amount; skewed alpha makes the alpha
# mass of any half of the batch differ from the other half's (the half with the one pos row: 1.1, else 0.4).
STEP_ALPHA, STEP_LR, STEP_LOSS = [0.1, 0.1, 0.8], 0.5, LossParams(2.0, 0.1, None)


def _step_batch(root):
    """8 train rows (4 neg, 3 neu, 1 pos) encoded for the tiny BERT, and its tokenizer."""
    from stages.fit import encode

    tokenizer = AutoTokenizer.from_pretrained(root / "base")
    rows = common.read_rows(root / "data/augment/train.jsonl")  # 8 neg, then 8 neu, then 8 pos
    data = encode(rows[0:4] + rows[8:11] + rows[16:17], tokenizer, {l: i for i, l in enumerate(LABELS)},
                  ModelParams(name="tiny", max_length=32, truncation="head", freeze_layers=0, cache_frozen=True))
    return data, tokenizer


def _dropout_free_model(root):
    from transformers import BertForSequenceClassification

    return BertForSequenceClassification.from_pretrained(root / "base", hidden_dropout_prob=0.0,
                                                         attention_probs_dropout_prob=0.0, classifier_dropout=0.0)


def _reference_sgd_step(root) -> dict[str, torch.Tensor]:
    """w - lr * d/dw of the focal loss of all 8 rows in one forward pass: no Trainer, no processes, no
    micro-batches; the alpha-weighted mean that every way of splitting the batch must reproduce."""
    from transformers import DataCollatorWithPadding

    from stages.focal_loss import focal_loss

    data, tokenizer = _step_batch(root)
    batch = DataCollatorWithPadding(tokenizer)([data[i] for i in range(len(data))])
    model = _dropout_free_model(root)
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    focal_loss(logits, batch["labels"], torch.tensor(STEP_ALPHA), STEP_LOSS.gamma, STEP_LOSS.label_smoothing).backward()
    with torch.no_grad():
        for param in model.parameters():
            if param.grad is not None:
                param -= STEP_LR * param.grad
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _trainer_sgd_step(root, out_dir, nproc: int = 1, accum: int = 1, sub_batches: int = 1) -> dict[str, torch.Tensor]:
    """The weights after FocalTrainer's first optimizer step on the 8 rows (global batch 8), set up by
    training_args for `nproc` processes x `accum` micro-batches of `sub_batches` parts each, with the
    optimizer swapped for plain SGD."""
    from transformers import DataCollatorWithPadding

    data, tokenizer = _step_batch(root)
    no_swa = SwaParams(enabled=False, start_epoch=2, lr=1e-3, keep="best")
    train_params = TrainParams(max_epochs=1, batch_size=8, learning_rate=STEP_LR, weight_decay=0.0, warmup_ratio=0.0,
                               early_stopping_patience=1, swa=no_swa, device="cpu", nproc=nproc, grad_accum_steps=accum,
                               folds=1, patience_from="swa_start", select_metric="ce_loss", refit=False, group_by_length=False,
                               temperature_scaling=False, sub_batches=sub_batches)
    model = _dropout_free_model(root)
    args = training_args(str(out_dir), train_params, seed=7)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (8 // (nproc * accum), accum)
    args.optim, args.max_steps = "sgd", 1
    args.max_grad_norm = 0.0  # clipping would rescale a wrongly scaled gradient to norm 1 and hide the error
    args.eval_strategy = args.save_strategy = "no"
    args.load_best_model_at_end = False
    trainer = FocalTrainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer),
                           alpha=torch.tensor(STEP_ALPHA), loss_params=STEP_LOSS, train_params=train_params)
    trainer.train()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_weights(got: dict, want: dict) -> None:
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_gradient_accumulation_gives_the_same_update_as_one_batch(tiny_root, tmp_path):
    """Global batch 8 as GA=1 x 8 or GA=2 x 4 takes the step of the whole batch's alpha-weighted mean loss."""
    want = _reference_sgd_step(tiny_root)
    initial = _dropout_free_model(tiny_root).state_dict()
    assert (want["classifier.weight"] - initial["classifier.weight"]).abs().max() > 1e-3  # the step moves weights
    for accum in (1, 2):
        _assert_same_weights(_trainer_sgd_step(tiny_root, tmp_path / f"ga{accum}", accum=accum), want)


def test_sub_batches_of_similar_lengths_give_the_same_update_as_the_padded_batch(tiny_root, tmp_path):
    """The rows differ in length: each part is cut to its own longest row, and the step is the whole batch's."""
    data, _ = _step_batch(tiny_root)
    assert len({len(ids) for ids in data["input_ids"]}) >= 3
    want = _reference_sgd_step(tiny_root)
    for accum, parts in ((1, 3), (2, 2), (1, 8)):
        _assert_same_weights(_trainer_sgd_step(tiny_root, tmp_path / f"sb{accum}-{parts}", accum=accum,
                                               sub_batches=parts), want)


def _trainer_sgd_step_as_rank(rank: int, world_size: int, port: int, root, out_dir) -> None:
    """Process `rank` of a torchrun-like gloo group on loopback; rank 0 saves the weights after the step."""
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    weights = _trainer_sgd_step(root, out_dir, nproc=world_size)
    if rank == 0:
        torch.save(weights, out_dir / "weights.pt")


def test_two_gloo_processes_take_the_step_of_the_whole_batch(tiny_root, tmp_path):
    """DDP: each process's loss is its 4 rows' alpha-weighted sum over the alpha mass of all 8 (gathered
    across processes), times the process count because DDP averages gradients. With plain SGD a wrong
    factor or a per-process mass gives another step; the AdamW gloo test normalises most of that away."""
    import torch.multiprocessing as mp

    from loopback import free_port

    mp.spawn(_trainer_sgd_step_as_rank, args=(2, free_port(), tiny_root, tmp_path), nprocs=2)
    _assert_same_weights(torch.load(tmp_path / "weights.pt", weights_only=True), _reference_sgd_step(tiny_root))


def test_build_model_starts_new_token_rows_at_their_subtoken_mean(tmp_path):
    base = build_tiny_bert(tmp_path / "base", ["alpha beta"], num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(base)
    sub_ids = tokenizer("zolpidem", add_special_tokens=False)["input_ids"]
    tokenizer.add_tokens(["zolpidem"])
    meta = {"mode": "extend", "new_tokens": {"zolpidem": sub_ids}}
    model = build_model(tokenizer, meta, ModelParams(str(base), 32, "head", 0, True), ["a", "b"], seed=0)
    original = AutoModelForSequenceClassification.from_pretrained(base).get_input_embeddings().weight
    row = model.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids("zolpidem")]
    torch.testing.assert_close(row, original[sub_ids].mean(0))


def test_weights_load_from_safetensors_only(tmp_path):
    import shutil

    base = build_tiny_bert(tmp_path / "base", ["alpha beta"], num_labels=2)
    model = AutoModelForSequenceClassification.from_pretrained(base)
    pickled = tmp_path / "pickled"
    shutil.copytree(base, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # what an old or hostile dir may hold
    tokenizer = AutoTokenizer.from_pretrained(base)
    meta = {"mode": "extend", "new_tokens": {}}
    with pytest.raises(OSError, match="safetensors"):
        build_model(tokenizer, meta, ModelParams(str(pickled), 32, "head", 0, True), ["a", "b"], seed=0)
    assert build_model(tokenizer, meta, ModelParams(str(base), 32, "head", 0, True), ["a", "b"], seed=0) is not None


def test_no_stage_enables_remote_code():
    from pathlib import Path

    for path in (Path(__file__).resolve().parent.parent / "stages").glob("*.py"):
        assert "trust_remote_code" not in path.read_text(), path


def _stage_root(root, nproc: int):
    """`tiny_root` as a repo the train stage's main() runs in: params.yaml, the base model under
    models/base/ (dropout off, so runs differ only by how examples are split across processes)."""
    import shutil

    from transformers import AutoConfig

    base = root / "models/base/tiny"
    shutil.copytree(root / "base", base)
    AutoConfig.from_pretrained(base, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).save_pretrained(base)
    meta_path = root / "models/tokenizer/tokenizer_meta.json"
    common.write_json(meta_path, {**common.read_json(meta_path), "base_model": "models/base/tiny"})
    seed, _, loss, train = _params(root, nproc=nproc)
    params = {"seed": seed, "model": {"name": "models/base/tiny", "max_length": 32, "truncation": "head",
                                "freeze_layers": 0, "cache_frozen": True},
              "loss": common.as_dict(loss), "train": common.as_dict(train)}
    (root / "params.yaml").write_text(__import__("yaml").safe_dump(params))
    return root


@pytest.mark.slow
def test_two_gloo_processes_write_one_set_of_outputs_matching_one_process(tmp_path):
    """train.nproc: 2 relaunches the stage under torchrun (gloo on CPU). Same global batch (8 of the
    24 train rows per step), so the one- and two-process runs take the same optimizer steps."""
    import shutil
    import subprocess
    import sys

    from safetensors.torch import load_file

    runs = {}
    for nproc in (1, 2):
        root = tmp_path / f"n{nproc}"
        shutil.copytree(tiny_root.__wrapped__(tmp_path / f"src{nproc}"), root)
        _stage_root(root, nproc)
        env = {**__import__("os").environ, "PIPELINE_ROOT": str(root)}
        done = subprocess.run([sys.executable, "-m", "stages.train"], cwd=common.ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count('"stop_reason"') == 1  # save_outputs printed the metrics once: one writer
        runs[nproc] = root
    two = runs[2]
    assert common.read_json(two / common.RUNTIME_DIR / "train.json")["processes"] == 2
    assert sorted(p.name for p in (two / "models/train").iterdir() if "safetensors" in p.name) == ["model.safetensors"]
    assert not [p for p in two.rglob("*") if p.name.endswith(".tmp")]  # no half-written or duplicate outputs
    assert sorted(p.name for p in (two / "plots/train").iterdir()) == ["history.json", "history.png"]
    one_metrics, two_metrics = (common.read_json(r / "metrics/train.json") for r in (runs[1], two))
    assert two_metrics["epochs_run"] == one_metrics["epochs_run"] and two_metrics["kept"] == one_metrics["kept"]
    assert two_metrics["n_val"] == one_metrics["n_val"] == 12  # every val example counted once
    assert two_metrics["swa"]["val_loss"] == pytest.approx(one_metrics["swa"]["val_loss"], rel=1e-4)
    w1, w2 = (load_file(r / "models/train/model.safetensors") for r in (runs[1], two))
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5)


def test_a_torchrun_launch_that_disagrees_with_nproc_fails_before_training(tiny_root):
    """`torchrun --nproc_per_node=2 -m stages.train` with train.nproc: 1 would double the global batch."""
    import os
    import subprocess
    import sys

    root = _stage_root(tiny_root, nproc=1)
    env = {**os.environ, "PIPELINE_ROOT": str(root), "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    done = subprocess.run([sys.executable, "-m", "stages.train"], cwd=common.ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0
    assert "launched with 2 processes but train.nproc is 1" in done.stderr
    assert not (root / "models/train").exists()

"""One fit of the train stage: build the model, train it with the Trainer, choose best or SWA, score
the held-out rows. `stages/train.py` runs one fit (train.folds: 1) or one per fold (stages/folds.py).

A refit (`train.refit`, stages/train.py) trains a fresh model on train + val with the same schedule,
stopped at the epoch the first fit's choice came from, and keeps what that fit kept.

Early stopping counts patience from `train.swa.start_epoch` when `train.patience_from: swa_start`,
so SWA averages at least `train.early_stopping_patience` snapshots before training
can stop; `first_epoch` (the default) counts from epoch 1, as Hugging Face's callback does.

Used by: stages/train.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, EarlyStoppingCallback, \
    TrainerCallback

from stages import common
from stages.classifier import softmax
from stages.encoder import ModelParams, load_encoder, resolve_device
from stages.focal_loss import LossParams
from stages.folds import Fold
from stages.frozen import CachedDataset, FrozenBottom, collate
from stages.ordinal import use_corn_head
from stages.swa import SWACallback, evaluate_best_and_swa
from stages.text import tokenize
from stages.trainer import FocalTrainer, checkpoint_dir, history_from_logs, make_compute_metrics, training_args, \
    val_metrics

if TYPE_CHECKING:
    from stages.train import TrainParams


@dataclass(frozen=True)
class Setup:
    """What every fit of one run shares."""
    seed: int
    model: ModelParams
    loss: LossParams
    train: "TrainParams"
    tokenizer: Any
    meta: dict            # models/tokenizer/tokenizer_meta.json
    labels: list[str]
    alpha: torch.Tensor
    pretrained: Path | None  # models/pretrain when that stage trained an encoder
    ordinal: list[int] | None  # label ids in rank order (loss.ordinal), or None: softmax head


@dataclass
class FitResult:
    model: torch.nn.Module  # the kept weights (best or SWA), whole (frozen bottom put back)
    trainer: FocalTrainer
    metrics: dict           # best, swa, kept, epochs_run, stop_reason, n_train, n_val
    history: list[dict]     # one row per epoch
    heldout_probs: np.ndarray  # (n_heldout, n_classes) softmax of the kept model, in the fold's row order


class PatienceFrom(EarlyStoppingCallback):
    """Hugging Face's early stopping, with evaluations before epoch `first_epoch` (1-based) left out of
    the patience count (the Trainer still tracks and restores the best checkpoint over all epochs)."""

    def __init__(self, patience: int, first_epoch: int):
        super().__init__(early_stopping_patience=patience)
        self.first_epoch = first_epoch

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        if round(state.epoch) >= self.first_epoch:
            super().on_evaluate(args, state, control, metrics, **kwargs)


class StopAt(TrainerCallback):
    """End training after epoch `epoch` (1-based); the LR schedule stays the one of train.max_epochs."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, args, state, control, **kwargs):
        if round(state.epoch) >= self.epoch:
            control.should_training_stop = True


def refit_plan(chosen: dict) -> tuple[int, str]:
    """(epochs to train, what to keep) for a refit of the fit whose metrics are `chosen`: as many
    epochs as that fit ran when it kept SWA (the same snapshots get averaged), up to its best
    epoch when it kept the best checkpoint."""
    if chosen["kept"] == "swa":
        return chosen["epochs_run"], "swa"
    return chosen["best"]["epoch"], "best"


def build_model(tokenizer, meta: dict, model_params: ModelParams, labels: list[str], seed: int,
                pretrained: Path | None = None):
    """A fresh classification head on the pretrain stage's encoder when it ran (`pretrained`), else on
    the base model fitted to the tokenizer (`encoder.load_encoder`)."""
    label_kwargs = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {lab: i for i, lab in enumerate(labels)},
    }
    if pretrained is None:
        source = common.resolve_model_name(model_params.name)
        return load_encoder(AutoModelForSequenceClassification, source, tokenizer, meta, seed, **label_kwargs)
    torch.manual_seed(seed)  # the new head is random
    return AutoModelForSequenceClassification.from_pretrained(pretrained, use_safetensors=True, **label_kwargs)


def pretrained_encoder(path: Path, model_name: str, tokenizer) -> Path | None:
    """models/pretrain when the pretrain stage trained an encoder there, else None; a stale one fails."""
    meta = common.read_json(path / "pretrain_meta.json")
    if not meta["enabled"]:
        return None
    if meta["base_model"] != model_name or meta["vocab_size"] != len(tokenizer):
        raise ValueError(f"{path} was pretrained from {meta['base_model']!r} with {meta['vocab_size']} tokens, not "
                         f"model.name={model_name!r} with {len(tokenizer)}: re-run the pipeline (`dvc repro`).")
    return path


def encode(rows: list[dict], tokenizer, label2id: dict[str, int], model_params: ModelParams):
    from datasets import Dataset

    enc = tokenize(tokenizer, [r["text"] for r in rows], model_params.max_length, model_params.truncation)
    return Dataset.from_dict({**enc, "labels": [label2id[r["label"]] for r in rows]})


def trainable(model, tokenizer, splits: dict[str, list[dict]], label2id: dict[str, int], model_params: ModelParams,
              train_params: "TrainParams"):
    """(model to train, datasets of `splits`, collator, FrozenBottom or None).

    model.freeze_layers > 0 freezes the embeddings and that many bottom layers; with model.cache_frozen
    they run once per text here (stages/frozen.py) and the model to train is the top alone."""
    encoded = [encode(rows, tokenizer, label2id, model_params) for rows in splits.values()]
    if not model_params.freeze_layers:
        return model, encoded, DataCollatorWithPadding(tokenizer), None
    frozen = FrozenBottom(model, model_params.freeze_layers)
    if not model_params.cache_frozen:
        return model, encoded, DataCollatorWithPadding(tokenizer), None
    device = torch.device(resolve_device(train_params.device, "train.device"))
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    model.to(device)
    # the eval batch size: padding inside a batch is masked, so it does not change the states
    cached = [CachedDataset(frozen.encode(ds["input_ids"], train_params.batch_size * 2, device), ds["labels"])
              for ds in encoded]
    print(f"train: cached the outputs of the embeddings and {frozen.n} frozen layers for "
          f"{sum(len(c) for c in cached)} texts; training the top {len(frozen.layers) - frozen.n} layers and the head")
    return frozen.top(), cached, collate, frozen


def fit(setup: Setup, fold: Fold, refit_of: dict | None = None) -> FitResult:
    """Train on `fold.train`, early-stop and choose on `fold.heldout`; the kept model and its scores.

    `refit_of` (an earlier fit's metrics): no early stopping and no choice; train for that fit's
    epochs (`refit_plan`) and keep what it kept, the last weights rather than the best checkpoint."""
    common.seed_everything(setup.seed)
    p = setup.train
    label2id = {lab: i for i, lab in enumerate(setup.labels)}
    model = build_model(setup.tokenizer, setup.meta, setup.model, setup.labels, setup.seed, setup.pretrained)
    if setup.ordinal:
        use_corn_head(model, setup.ordinal)
    model, (train_ds, val_ds), collator, frozen = trainable(
        model, setup.tokenizer, {"train": fold.train, "val": fold.heldout}, label2id, setup.model, p)
    swa_cb = SWACallback(p.swa.start_epoch) if p.swa.enabled else None
    if refit_of is None:
        first = p.swa.start_epoch if p.swa.enabled and p.patience_from == "swa_start" else 1
        stop, keep = PatienceFrom(p.early_stopping_patience, first), p.swa.keep
    else:
        epochs, keep = refit_plan(refit_of)
        stop = StopAt(epochs)
    with checkpoint_dir() as ckpt_dir:
        trainer = FocalTrainer(
            model=model, args=training_args(ckpt_dir, p, setup.seed, load_best=refit_of is None),
            train_dataset=train_ds, eval_dataset=val_ds, data_collator=collator,
            compute_metrics=make_compute_metrics(setup.alpha, setup.loss),
            callbacks=[stop] + ([swa_cb] if swa_cb else []), alpha=setup.alpha, loss_params=setup.loss,
            train_params=p,
        )
        trainer.train()
        # Before the final evaluations below, which log at the last epoch too.
        history = history_from_logs(trainer.state.log_history)
        best, swa, kept = evaluate_best_and_swa(trainer, swa_cb, keep, p.select_metric)
        best, swa = val_metrics(best), swa and val_metrics(swa)
        heldout_probs = softmax(trainer.predict(val_ds).predictions)
        if frozen is not None:
            frozen.full()  # the kept top layers and head on the frozen bottom: what evaluate loads
    epochs_run = len(history)
    if swa_cb is not None and swa is None and refit_of is None:
        skipped = (f"early stopping ended training at epoch {epochs_run}, before train.swa.start_epoch="
                   f"{p.swa.start_epoch}: no weights were averaged, the best checkpoint is kept")
        print(f"train: WARNING: SWA did nothing: {skipped}")
        swa = {"snapshots": 0, "skipped": skipped}
    elif swa is not None:
        swa = {**swa, "snapshots": swa_cb.snapshots}
    metrics = {
        "best": {**best, "epoch": min(history, key=lambda h: h["val_loss"])["epoch"]},
        "swa": swa,
        "kept": kept,
        "epochs_run": epochs_run,
        "stop_reason": ("refit" if refit_of is not None else
                        "early_stopping" if epochs_run < p.max_epochs else "max_epochs"),
        "n_train": len(train_ds),
        "n_val": len(val_ds),
    }
    return FitResult(trainer.model, trainer, metrics, history, heldout_probs)

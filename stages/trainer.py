"""The Hugging Face Trainer as the train stage uses it: focal loss, alpha-mass normalisation, the SWA-aware
LR schedule, whole-set validation metrics, TrainingArguments, checkpoints, the per-epoch history, and
batches run as sub-batches of similar lengths (`train.sub_batches`).

Used by: stages/train.py (params sections `loss`, `train`), bench/train_throughput.py.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
from sklearn.metrics import accuracy_score
from transformers import Trainer, TrainingArguments
from transformers.modeling_outputs import SequenceClassifierOutput

from stages.encoder import device_args, resolve_device
from stages.metrics import macro_f1  # the same definition evaluate scores test with
from stages.focal_loss import LossParams, focal_loss
from stages.swa import VAL_LOSS, build_lr_scheduler

if TYPE_CHECKING:
    from stages.train import TrainParams


class FocalTrainer(Trainer):
    # compute_loss divides by the alpha mass of the whole accumulated batch (get_batch_samples),
    # so the Trainer must not divide again by the gradient-accumulation steps.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, alpha: torch.Tensor, loss_params: LossParams, train_params: "TrainParams", **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha, self.loss_params, self.train_params = alpha, loss_params, train_params

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The micro-batches of one optimizer step, and their total alpha weight (over every DDP
        process) as the loss normalizer."""
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        weight = sum(self.alpha[b["labels"].cpu()].sum() for b in batch_samples) if batch_samples else None
        if weight is not None and self.args.world_size > 1:
            weight = self.accelerator.gather(weight.reshape(1).to(device)).sum()
        # A Python float: valid against logits on any device.
        return batch_samples, None if weight is None else float(weight)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = sub_batch_logits(model, {k: v for k, v in inputs.items() if k != "labels"},
                                  self.train_params.sub_batches)
        outputs = SequenceClassifierOutput(logits=logits)
        # In evaluation the Trainer passes an example count, not our alpha mass: use the batch's own.
        normalizer = num_items_in_batch if model.training else None
        loss = focal_loss(outputs.logits, inputs["labels"], self.alpha, self.loss_params.gamma,
                          self.loss_params.label_smoothing, normalizer=normalizer)
        if model.training:
            # DDP averages gradients over processes; each process's sum over the global alpha mass
            # times the process count makes that average the global weighted mean.
            loss = loss * self.args.world_size
        return (loss, outputs) if return_outputs else loss

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            steps_per_epoch = max(1, num_training_steps // self.train_params.max_epochs)
            self.lr_scheduler = build_lr_scheduler(
                optimizer or self.optimizer,
                num_training_steps,
                steps_per_epoch,
                self.train_params.warmup_ratio,
                self.train_params.swa,
            )
        return self.lr_scheduler


def right_padded(mask: torch.Tensor) -> bool:
    """Whether every row's real positions come first (its mask is ones, then zeros)."""
    return bool((mask.cumprod(dim=1).sum(dim=1) == mask.sum(dim=1)).all())


def sub_batch_logits(model, inputs: dict[str, torch.Tensor], sub_batches: int) -> torch.Tensor:
    """The model's logits for a batch, run as `sub_batches` parts of similar lengths, each cut to its
    longest row, in the batch's own order.

    A padded position is masked out of attention, so cutting it off changes no real position's output
    (up to float rounding); the batch, its loss and the step stay the same, with less padding to compute
    (train stage times: bench/results/crossfit.md, `default` vs `padded`). Dropout masks are drawn per part,
    so the random draws differ from one padded batch's. A batch without an attention mask, or a
    left-padded one, runs whole."""
    mask = inputs.get("attention_mask")
    if sub_batches <= 1 or mask is None or len(mask) < 2 or not right_padded(mask):
        return model(**inputs).logits
    lengths = mask.sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    seq_len = mask.shape[1]
    parts = []
    for idx in torch.tensor_split(order, min(sub_batches, len(order))):
        longest = int(lengths[idx].max())
        part = {key: value[idx, :longest] if value.dim() > 1 and value.shape[1] == seq_len else value[idx]
                for key, value in inputs.items()}
        parts.append(model(**part).logits)
    return torch.cat(parts)[torch.argsort(order)]


def make_compute_metrics(alpha: torch.Tensor, loss_params: LossParams):
    """Validation metrics over the whole set at once, so none depends on the eval batch size.

    `focal_loss` (what early stopping and `swa.keep: auto` compare) is the training loss over
    all validation examples; `ce_loss`, plain cross-entropy, is comparable across gammas.
    """

    def compute_metrics(eval_pred) -> dict[str, float]:
        logits, labels = (torch.as_tensor(np.asarray(x)) for x in eval_pred)
        labels = labels.long()
        preds = logits.argmax(-1).numpy()
        return {
            "accuracy": accuracy_score(labels, preds),
            "macro_f1": macro_f1(labels.numpy(), preds, len(alpha)),
            "focal_loss": focal_loss(logits, labels, alpha, loss_params.gamma, loss_params.label_smoothing).item(),
            "ce_loss": torch.nn.functional.cross_entropy(logits.float(), labels).item(),
        }

    return compute_metrics


def training_args(out_dir: str, p: "TrainParams", seed: int, load_best: bool = True) -> TrainingArguments:
    """The Trainer's arguments; `load_best`: restore the lowest-val-loss checkpoint at the end (a refit,
    whose val rows are in its training data, keeps its last weights instead)."""
    cuda = resolve_device(p.device, "train.device") == "cuda"
    per_device = p.batch_size // (p.nproc * p.grad_accum_steps)
    return TrainingArguments(
        output_dir=out_dir,
        num_train_epochs=p.max_epochs,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=p.grad_accum_steps,
        per_device_eval_batch_size=per_device * 2,  # metrics are over the whole val set: no effect on them
        learning_rate=p.learning_rate,
        weight_decay=p.weight_decay,
        warmup_steps=p.warmup_ratio,  # < 1 means a fraction of all steps (used by our scheduler too)
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        load_best_model_at_end=load_best,
        metric_for_best_model=VAL_LOSS,  # over all val examples, not a mean of batch means
        greater_is_better=False,
        save_total_limit=1,
        save_only_model=True,  # checkpoints live in a temp dir; the optimizer state is never needed
        seed=seed,
        data_seed=seed,
        train_sampling_strategy="group_by_length" if p.group_by_length else "random",
        **device_args(p.device, "train.device"),
        ddp_backend=("nccl" if cuda else "gloo") if p.nproc > 1 else None,
        report_to="none",
        dataloader_num_workers=0,
    )


# A multi-process run's checkpoint dir: every process must load the best checkpoint from one place.
CKPT_DIR_ENV = "TRAIN_CHECKPOINT_DIR"


@contextlib.contextmanager
def checkpoint_dir() -> Iterator[str]:
    """The launcher's shared temp dir under torchrun, else a fresh temp dir removed afterwards."""
    if CKPT_DIR_ENV in os.environ:
        yield os.environ[CKPT_DIR_ENV]
        return
    with tempfile.TemporaryDirectory(prefix="train-ckpt-") as path:
        yield path


def val_metrics(m: dict) -> dict:
    return {"val_loss": m[VAL_LOSS], "val_ce_loss": m["eval_ce_loss"], "val_accuracy": m["eval_accuracy"],
            "val_macro_f1": m["eval_macro_f1"]}


def history_from_logs(log_history: list[dict]) -> list[dict]:
    """One row per epoch: train loss, val loss/accuracy/macro-F1 and the LR, from Trainer logs."""
    rows: dict[int, dict] = {}
    for entry in log_history:
        if "epoch" not in entry:
            continue
        row = rows.setdefault(round(entry["epoch"]), {"epoch": round(entry["epoch"])})
        if "loss" in entry:
            row.update(train_loss=entry["loss"], learning_rate=entry["learning_rate"])
        if VAL_LOSS in entry:
            row.update(val_metrics(entry))
    return [rows[e] for e in sorted(rows) if "val_loss" in rows[e] and "train_loss" in rows[e]]



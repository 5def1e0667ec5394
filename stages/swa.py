"""Stochastic weight averaging for the Trainer: LR schedule, weight averaging, evaluation.

Built on torch.optim.swa_utils: `SWALR` anneals the LR to `train.swa.lr` during
`train.swa.start_epoch` and holds it; `AveragedModel` keeps the running mean of the
end-of-epoch weights from that epoch on. BERT-style models have LayerNorm, not
BatchNorm, so `update_bn` is not needed. The Trainer restores the best checkpoint
*before* `on_train_end`, so the averaged weights are evaluated after `train()` returns
and `train.swa.keep` decides explicitly which model is saved.

Used by: stages/train.py (params section `train.swa`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from torch.optim.swa_utils import SWALR, AveragedModel
from transformers import TrainerCallback, get_cosine_schedule_with_warmup

from stages.common import POSITIVE, Range, check_ranges


# The Trainer's key for the validation loss that early stopping and `keep: auto` compare: the
# focal loss over all validation examples (train.make_compute_metrics), not a mean of batch means.
VAL_LOSS = "eval_focal_loss"


@dataclass(frozen=True)
class SwaParams:
    enabled: bool
    # 1-based: the first epoch whose end-of-epoch weights are averaged. Epoch 1 is the warmup and
    # the climb out of the random head; averaging it in (or starting SWALR in it) drops the warmup.
    start_epoch: Annotated[int, Range(2, why="epoch 1 is the warmup")]
    lr: Annotated[float, POSITIVE]
    keep: Literal["best", "swa", "auto"]  # auto: whichever scores better on train.select_metric

    def __post_init__(self) -> None:
        check_ranges(self, "train.swa")


def build_lr_scheduler(optimizer, total_steps: int, steps_per_epoch: int, warmup_ratio: float, swa: SwaParams):
    """Cosine with linear warmup; with SWA, anneal to swa.lr during swa.start_epoch, then constant."""
    cosine = get_cosine_schedule_with_warmup(optimizer, math.ceil(total_steps * warmup_ratio), total_steps)
    swa_start_step = (swa.start_epoch - 1) * steps_per_epoch
    if not swa.enabled or swa_start_step >= total_steps:
        return cosine
    swalr = SWALR(optimizer, swa_lr=swa.lr, anneal_epochs=steps_per_epoch, anneal_strategy="cos")
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [cosine, swalr], milestones=[swa_start_step])


class SWACallback(TrainerCallback):
    """Average the weights at the end of each epoch from `start_epoch` (1-based) on."""

    def __init__(self, start_epoch: int):
        self.start_epoch = start_epoch
        self.averaged: AveragedModel | None = None

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if round(state.epoch) >= self.start_epoch:
            self.update(model)

    def update(self, model: torch.nn.Module) -> None:
        if self.averaged is None:
            self.averaged = AveragedModel(model)  # a copy; the first update sets it to `model`
        self.averaged.update_parameters(model)

    @property
    def snapshots(self) -> int:
        return 0 if self.averaged is None else int(self.averaged.n_averaged.item())


# train.select_metric -> (the Trainer's validation key, higher is better): what `keep: auto` compares.
SELECT_METRICS = {"macro_f1": ("eval_macro_f1", True), "ce_loss": ("eval_ce_loss", False),
                  "focal_loss": (VAL_LOSS, False)}


def better_or_equal(a: dict, b: dict, select_metric: str) -> bool:
    """Whether validation metrics `a` score at least as well as `b` on `select_metric`."""
    key, higher = SELECT_METRICS[select_metric]
    return a[key] >= b[key] if higher else a[key] <= b[key]


def evaluate_best_and_swa(trainer, swa_cb: SWACallback | None, keep: str,
                          select_metric: str = "focal_loss") -> tuple[dict, dict | None, str]:
    """Evaluate the restored best model and the averaged one; leave the kept one in `trainer.model`.
    `keep: auto` keeps SWA unless the best checkpoint scores strictly better on `select_metric`."""
    best = trainer.evaluate()
    if swa_cb is None or swa_cb.snapshots == 0:
        return best, None, "best"
    best_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.model.load_state_dict(swa_cb.averaged.module.state_dict())
    swa = trainer.evaluate()
    kept = keep if keep != "auto" else ("swa" if better_or_equal(swa, best, select_metric) else "best")
    if kept == "best":
        trainer.model.load_state_dict(best_state)
    return best, swa, kept

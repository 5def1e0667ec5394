"""Tests for stages.swa: where the SWA schedule takes over from the cosine, which model `keep` leaves loaded,
and the params' errors. (The running average itself and the `keep` cases with a trained model: test_train.py.)"""

from __future__ import annotations

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from stages.swa import VAL_LOSS, SWACallback, SwaParams, build_lr_scheduler, evaluate_best_and_swa


def _lrs(make_scheduler, total_steps: int) -> list[float]:
    """The LR of each of `total_steps` optimizer steps under the scheduler `make_scheduler(optimizer)`."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler, lrs = make_scheduler(opt), []
    for _ in range(total_steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return lrs


def _swa(enabled: bool = True, start_epoch: int = 3) -> SwaParams:
    return SwaParams(enabled=enabled, start_epoch=start_epoch, lr=0.1, keep="swa")


COSINE = _lrs(lambda opt: get_cosine_schedule_with_warmup(opt, 4, 40), 40)  # 40 steps, warmup 4


def test_schedule_is_the_cosine_until_the_swa_epoch_then_anneals_within_it():
    lrs = _lrs(lambda opt: build_lr_scheduler(opt, 40, 8, 0.1, _swa(start_epoch=3)), 40)
    assert lrs[:16] == pytest.approx(COSINE[:16], abs=1e-12)  # epochs 1 and 2: the plain cosine
    assert all(a >= b for a, b in zip(lrs[16:24], lrs[17:24])) and lrs[23] > 0.1  # annealing during epoch 3
    assert lrs[24:] == pytest.approx([0.1] * 16)


@pytest.mark.parametrize("swa", [_swa(enabled=False), _swa(start_epoch=6)], ids=["disabled", "starts-after-last-step"])
def test_schedule_is_the_plain_cosine_without_swa_in_the_run(swa):
    assert _lrs(lambda opt: build_lr_scheduler(opt, 40, 8, 0.1, swa), 40) == pytest.approx(COSINE, abs=1e-12)


class _Trainer:
    """What evaluate_best_and_swa uses of a Trainer: `model`, and evaluate() reporting the weight as the loss."""

    def __init__(self, weight: float):
        self.model = torch.nn.Linear(1, 1, bias=False)
        self.model.weight.data.fill_(weight)

    def evaluate(self) -> dict:
        return {VAL_LOSS: self.model.weight.item()}


def _averaged(*weights: float) -> SWACallback:
    callback, model = SWACallback(start_epoch=2), torch.nn.Linear(1, 1, bias=False)
    for w in weights:
        model.weight.data.fill_(w)
        callback.update(model)
    return callback


@pytest.mark.parametrize("callback", [None, SWACallback(start_epoch=2)], ids=["no-swa", "no-snapshot"])
def test_without_an_averaged_model_the_best_one_is_kept(callback):
    trainer = _Trainer(2.0)
    assert evaluate_best_and_swa(trainer, callback, keep="swa") == ({VAL_LOSS: 2.0}, None, "best")
    assert trainer.model.weight.item() == 2.0


@pytest.mark.parametrize(("best", "keep", "kept", "loaded"), [
    (3.0, "auto", "swa", 2.0),  # swa (mean of 1 and 3 = 2) is lower
    (2.0, "auto", "swa", 2.0),  # a tie keeps the averaged weights
    (1.0, "auto", "best", 1.0),
    (3.0, "best", "best", 3.0),  # an explicit keep wins over the losses
])
def test_keep_picks_the_model_left_loaded(best, keep, kept, loaded):
    trainer = _Trainer(best)
    best_metrics, swa_metrics, got = evaluate_best_and_swa(trainer, _averaged(1.0, 3.0), keep=keep)
    assert (best_metrics[VAL_LOSS], swa_metrics[VAL_LOSS], got) == (best, 2.0, kept)
    assert trainer.model.weight.item() == loaded


@pytest.mark.parametrize(("field", "match"), [
    ({"start_epoch": 1}, r"^train\.swa\.start_epoch: 1 is out of range, allowed >= 2 \(epoch 1 is the warmup\)"),
    ({"lr": 0.0}, r"^train\.swa\.lr: 0\.0 is out of range, allowed > 0"),
])
def test_params_name_the_bad_key_in_full(field, match):
    with pytest.raises(ValueError, match=match):
        SwaParams(**{"enabled": True, "start_epoch": 2, "lr": 1e-3, "keep": "swa", **field})

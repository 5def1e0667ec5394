"""Fine-tune a transformer classifier with focal loss, cosine LR, early stopping and SWA.

Hugging Face `Trainer` does the loop (stages/fit.py, stages/trainer.py): AdamW with decoupled
weight decay, cosine schedule with warmup, evaluation every epoch, early stopping on validation
loss with the best checkpoint restored; patience counts from `train.swa.start_epoch`
(`train.patience_from`). From that epoch the LR anneals to `train.swa.lr` (torch SWALR) and the
weights are averaged at the end of every epoch (torch AveragedModel); the averaged model is
evaluated on val too, and `train.swa.keep` picks which one is the stage's output (`auto`: the one
scoring better on `train.select_metric`). `train.device` picks CPU or CUDA; on CUDA, AMP (bf16
where supported, else fp16) with the loss in float32; fp32 and deterministic on CPU.

`train.folds: K` > 1 cross-fits (stages/folds.py): K fold models over train + val, each
early-stopped on its own held-out fold; their out-of-fold predictions score every labelled
review, and `evaluate` scores the mean of their probabilities. One stage loops over the folds
rather than a `foreach` stage per fold: K is a param (a `foreach` list would have to repeat it in
dvc.yaml), every fold needs the same inputs, and the ensemble and the out-of-fold scores need
all folds at once; on several GPUs `train.nproc` speeds up each fold instead.

`train.refit: true` (K = 1) is the cheaper way to train on every labelled review: after the fit on
train, stopped and chosen on val, a fresh model trains on train + val with the same schedule for the
epochs that fit chose (stages/fit.refit_plan), and it is the stage's model; the held-out scores
(and so `bias_tuned`) stay the first fit's, since the refit has seen val.

`train.temperature_scaling` fits one temperature T on the held-out probabilities (validation, or
out-of-fold with K folds) for the lowest cross-entropy (Guo et al. 2017); the classifier divides its log
probabilities by T from then on (pipeline.json), so evaluate, the MLflow model and `make predict` give
calibrated confidences. Argmax, and so every F1, is unchanged. Fitted after early stopping, `keep` and
the held-out scores, which all read the unscaled probabilities. Under `train.refit` it is fitted on the
first fit's validation scores (the refit has no held-out rows) and applied to the refit.

`train.nproc` > 1 makes the stage relaunch itself under torchrun (DDP: NCCL on CUDA, gloo
on CPU), so `dvc repro` is unchanged. `train.batch_size` is the global batch (examples per
optimizer step): each process takes batch_size / (nproc * grad_accum_steps) per forward
pass, so the same params give the same optimisation at any nproc and the LR needs no
scaling. Only rank 0 writes outputs.

Inputs:  data/augment/train.jsonl, data/prepare/{val.jsonl,labels.json},
         data/alpha/alpha.json, models/tokenizer/, models/pretrain/ (its encoder, when that stage ran)
Outputs: models/train/ (model or fold-<k>/ models, tokenizer, pipeline.json, heldout.json: the
         held-out probabilities), metrics/train.json, plots/train/history.{json,png};
         .cache/runtime/train.json (device, wall time: MLflow only)
Params:  seed, model, loss, train
Run:     python -m stages.train
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from transformers import AutoTokenizer

from stages import common, folds
from stages.calibration import fit_temperature
from stages.cli import cli
from stages.encoder import ModelParams, resolve_device, save_tokenizer
from stages.fit import Setup, fit, pretrained_encoder, refit_plan
from stages.focal_loss import LossParams
from stages.metrics import macro_f1
from stages.ordinal import order_ids
from stages.swa import SwaParams
from stages.trainer import CKPT_DIR_ENV


@dataclass(frozen=True)
class TrainParams:
    max_epochs: Annotated[int, common.AT_LEAST_1]
    batch_size: Annotated[int, common.AT_LEAST_1]
    learning_rate: Annotated[float, common.POSITIVE]
    weight_decay: Annotated[float, common.NON_NEGATIVE]
    warmup_ratio: Annotated[float, common.Range(0, 1, high_open=True)]
    early_stopping_patience: Annotated[int, common.AT_LEAST_1]
    swa: SwaParams
    device: Literal["auto", "cpu", "cuda"]  # auto: CUDA when torch sees a GPU
    nproc: Annotated[int, common.AT_LEAST_1]  # DDP processes (torchrun --nproc_per_node); one per GPU
    grad_accum_steps: Annotated[int, common.AT_LEAST_1]
    # 1: train on train, validate on val. K > 1: K fold models over train + val (stages/folds.py).
    folds: Annotated[int, common.AT_LEAST_1]
    # swa_start: patience counts from train.swa.start_epoch, so SWA averages >= patience snapshots;
    # first_epoch: from epoch 1 (Hugging Face's rule). Either way the best checkpoint is over all epochs.
    patience_from: Literal["swa_start", "first_epoch"]
    # What `train.swa.keep: auto` compares on the held-out rows (ties keep SWA).
    select_metric: Literal["macro_f1", "ce_loss", "focal_loss"]
    # true (train.folds: 1 only): after the fit on train, stopped and chosen on val, a fresh fit on train +
    # val for the epochs that fit chose, keeping what it kept; the held-out scores stay the first fit's.
    refit: bool
    # true: the Trainer's length-grouped sampler (batches of similar lengths) instead of a random order.
    group_by_length: bool
    # true: fit a temperature on the held-out rows (stages/calibration.py) that every prediction is scaled by.
    temperature_scaling: bool
    # Each batch runs as this many parts of similar lengths, each cut to its longest row (stages/trainer.py): the
    # same examples, loss and step with less padding. 1: the padded batch whole.
    sub_batches: Annotated[int, common.AT_LEAST_1]

    def __post_init__(self) -> None:
        common.check_ranges(self, "train")
        if self.batch_size % (self.nproc * self.grad_accum_steps):
            raise common.ParamsError(
                f"train.batch_size ({self.batch_size}) is the global batch and must be a multiple of "
                f"train.nproc x train.grad_accum_steps ({self.nproc} x {self.grad_accum_steps}); "
                f"change one of them")
        if self.refit and self.folds > 1:
            raise common.ParamsError(
                f"train.refit refits the single split's model on train + val, but train.folds is {self.folds}, "
                "whose fold models already train on every labelled review but their own fold: set train.refit: "
                "false or train.folds: 1")
        if self.swa.enabled and self.swa.start_epoch > self.max_epochs:
            raise common.ParamsError(
                f"train.swa.start_epoch ({self.swa.start_epoch}) must be <= train.max_epochs ({self.max_epochs}), "
                "or SWA would never average anything; or set train.swa.enabled: false")


def check_sampling(model_params: ModelParams, p: TrainParams) -> None:
    """Length grouping reads every training text's token ids, which the cached frozen layers replace."""
    if p.group_by_length and model_params.freeze_layers and model_params.cache_frozen:
        raise common.ParamsError(
            "train.group_by_length needs the token ids of every training text, but with model.freeze_layers "
            f"({model_params.freeze_layers}) and model.cache_frozen the Trainer sees cached hidden states: "
            "set train.group_by_length: false, or model.cache_frozen: false")


def launch_distributed(p: TrainParams) -> int:
    """Run this stage under torchrun with `p.nproc` processes on this machine; their exit code."""
    if resolve_device(p.device, "train.device") == "cuda" and p.nproc > torch.cuda.device_count():
        raise common.ParamsError(f"train.nproc is {p.nproc} but torch sees {torch.cuda.device_count()} GPU(s): "
                                 "lower train.nproc, or expose more GPUs (CUDA_VISIBLE_DEVICES)")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={p.nproc}",
           "-m", "stages.train"]
    print(f"train: launching {p.nproc} processes: {' '.join(cmd[1:])}")
    with tempfile.TemporaryDirectory(prefix="train-ckpt-") as shared:
        return subprocess.run(cmd, env={**os.environ, CKPT_DIR_ENV: shared}, check=False).returncode


def save_history_plot(histories: dict[str, list[dict]], path: Path) -> None:
    """Static PNG of the curves, one line per fold (dvc plots' HTML needs a CDN, which offline users lack)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(10, 4))
    for n, (name, history) in enumerate(histories.items()):
        epochs, tag = [h["epoch"] for h in history], "" if len(histories) == 1 else f" {name}"
        ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", color=f"C{2 * n}", label=f"train loss{tag}")
        ax_loss.plot(epochs, [h["val_loss"] for h in history], "o--", color=f"C{2 * n + 1}", label=f"val loss{tag}")
        ax_f1.plot(epochs, [h["val_macro_f1"] for h in history], "o-", color=f"C{n}", label=name)
    ax_loss.set(xlabel="epoch", ylabel="focal loss", title="Loss")
    ax_loss.legend(fontsize="small")
    ax_f1.set(xlabel="epoch", ylabel="macro-F1", title="Validation macro-F1" if len(histories) == 1
              else "Held-out fold macro-F1", ylim=(0, 1))
    if len(histories) > 1:
        ax_f1.legend(fontsize="small")
    common.save_png(fig, path)


def run(
    seed: int,
    model_params: ModelParams,
    loss_params: LossParams,
    train_params: TrainParams,
    root: Path = common.ROOT,
) -> dict:
    common.seed_everything(seed)
    labels = common.read_json(root / "data/prepare/labels.json")
    alpha = load_alpha(root / "data/alpha/alpha.json", labels)
    tokenizer = AutoTokenizer.from_pretrained(root / "models/tokenizer")
    meta = common.read_json(root / "models/tokenizer/tokenizer_meta.json")
    if meta["base_model"] != model_params.name:
        raise ValueError(
            f"models/tokenizer was built for model.name={meta['base_model']!r} but params.yaml has "
            f"{model_params.name!r}: re-run the tokenizer stage (`dvc repro`)."
        )
    # before any training: a wrong order fails at once
    order = order_ids(loss_params.ordinal, labels, "loss.ordinal in params.yaml") if loss_params.ordinal else None
    train_rows = common.read_rows(root / "data/augment/train.jsonl")
    val_rows = common.read_rows(root / "data/prepare/val.jsonl")
    plan = folds.plan(train_rows, val_rows, train_params.folds, seed)
    print(f"train {len(train_rows)} rows, val {len(val_rows)} rows, {len(labels)} classes, vocab {len(tokenizer)}"
          + (f"; {len(plan)} folds over the {sum(len(f.heldout) for f in plan)} labelled reviews" if len(plan) > 1
             else ""))
    pretrained = pretrained_encoder(root / "models/pretrain", model_params.name, tokenizer)
    if pretrained is not None:
        print(f"train: starting from the encoder of the pretrain stage ({pretrained})")
    setup = Setup(seed, model_params, loss_params, train_params, tokenizer, meta, labels, alpha, pretrained, order)
    start = time.perf_counter()
    results = []
    for n, fold in enumerate(plan, 1):
        if len(plan) > 1:
            print(f"train: {fold.name} ({n} of {len(plan)}): {len(fold.train)} train rows, "
                  f"{len(fold.heldout)} held out")
        results.append(fit(setup, fold))
    refit = None
    if train_params.refit:
        epochs, kept = refit_plan(results[0].metrics)
        pool = folds.Fold("refit", train_rows + val_rows, val_rows)
        print(f"train: refit on train + val ({len(pool.train)} rows) for {epochs} epochs, keeping {kept}")
        refit = fit(setup, pool, refit_of=results[0].metrics)
    wall = time.perf_counter() - start
    ids, heldout_labels, probs = folds.out_of_fold(plan, [r.heldout_probs for r in results])
    y = np.array([labels.index(lab) for lab in heldout_labels])
    metrics = {"heldout": heldout_summary(probs, y, labels, "validation" if len(plan) == 1 else "out-of-fold")}
    # after every selection above, which read the unscaled probabilities; argmax and F1 do not change
    metrics["heldout"]["temperature"] = fit_temperature(probs, y) if train_params.temperature_scaling else 1.0
    if len(plan) == 1:
        metrics.update(results[0].metrics)
        if refit is not None:  # its val rows are training rows: no held-out score
            metrics["refit"] = {k: refit.metrics[k] for k in ("epochs_run", "kept", "n_train")}
    else:
        metrics["folds"] = {fold.name: r.metrics for fold, r in zip(plan, results)}
    trainer = results[0].trainer
    if trainer.is_world_process_zero():  # under DDP every process holds the same model: one writes
        epochs = sum(r.metrics["epochs_run"] * r.metrics["n_train"] for r in results + [refit] if r is not None)
        common.write_json(root / common.RUNTIME_DIR / "train.json", {
            "device": str(trainer.args.device), "processes": trainer.args.world_size, "wall_time_s": round(wall, 1),
            "train_samples_per_second": round(epochs / wall, 2)})
        pipeline = {"seed": seed, "labels": labels, "model": common.as_dict(model_params),
                    "loss": common.as_dict(loss_params), "train": common.as_dict(train_params),
                    "kept": [r.metrics["kept"] for r in results] if len(plan) > 1 else results[0].metrics["kept"],
                    "temperature": metrics["heldout"]["temperature"]}  # stages/classifier.py scales by it
        if len(plan) > 1:
            pipeline["members"] = [fold.name for fold in plan]  # stages/classifier.py averages their probabilities
        heldout = {"what": metrics["heldout"]["what"], "rows": metrics["heldout"]["rows"], "ids": ids, "labels": heldout_labels,
                   "probs": probs.tolist()}
        models = {f.name: r.model for f, r in zip(plan, results)} if refit is None else {"refit": refit.model}
        save_outputs(root, tokenizer, pipeline, models, heldout, metrics,
                     {f.name: r.history for f, r in zip(plan, results)})
    return metrics


def heldout_summary(probs: np.ndarray, y: np.ndarray, labels: list[str], what: str) -> dict:
    """Scores of the held-out predictions (validation for one fit, out-of-fold for K): the selection signal."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss

    pred = probs.argmax(axis=1)
    per_class = f1_score(y, pred, labels=list(range(len(labels))), average=None, zero_division=0)
    return {"what": what, "rows": int(len(y)), "macro_f1": macro_f1(y, pred, len(labels)),
            "accuracy": float(accuracy_score(y, pred)),
            "ce_loss": float(log_loss(y, probs, labels=list(range(len(labels))))),
            "per_class_f1": {lab: float(f) for lab, f in zip(labels, per_class)}}


def load_alpha(path: Path, labels: list[str]) -> torch.Tensor:
    saved = common.read_json(path)
    if saved["labels"] != labels:
        raise ValueError(f"{path} was computed for labels {saved['labels']}, not {labels}: re-run `dvc repro`.")
    return torch.tensor(saved["alpha"], dtype=torch.float32)


def save_outputs(root: Path, tokenizer, pipeline: dict, models: dict, heldout: dict, metrics: dict,
                 histories: dict[str, list[dict]]) -> None:
    """models/train (one model, or one sub-dir per fold; tokenizer, pipeline.json, heldout.json), the
    history (plots/train/history.json: the first fit's epochs, for `dvc plots`; the PNG draws every fold)
    and metrics/train.json."""
    with common.atomic_dir(root / "models/train") as tmp:
        for name, model in models.items():
            model.save_pretrained(tmp if len(models) == 1 else tmp / name)
        save_tokenizer(tokenizer, tmp)
        common.write_json(tmp / "pipeline.json", pipeline)
        common.write_json(tmp / "heldout.json", heldout)  # evaluate tunes the bias_tuned rule on these
    common.write_json(root / "plots/train/history.json", next(iter(histories.values())))
    save_history_plot(histories, root / "plots/train/history.png")
    common.write_json(root / "metrics/train.json", metrics)
    print(json.dumps({k: v for k, v in metrics.items() if k != "folds"}, indent=2))


def main() -> None:
    model_params = common.load_section(ModelParams, "model")
    common.check_tracked_model(model_params.name, "model.name")
    train_params = common.load_section(TrainParams, "train")
    check_sampling(model_params, train_params)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and world != train_params.nproc:
        raise common.ParamsError(
            f"launched with {world} processes but train.nproc is {train_params.nproc}: the global batch would "
            f"change with the launch; set train.nproc: {world} and run `python -m stages.train` (or `dvc repro`), "
            "which starts torchrun itself")
    if train_params.nproc > 1 and "LOCAL_RANK" not in os.environ:  # not yet under torchrun
        code = launch_distributed(train_params)
        if code:
            raise SystemExit(f"train: a torchrun process failed (exit {code}); its traceback is above")
        return
    run(common.load_seed(), model_params, common.load_section(LossParams, "loss"), train_params)


if __name__ == "__main__":
    cli("train", main)

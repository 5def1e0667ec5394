"""Fine-tune a transformer classifier with focal loss, cosine LR, early stopping and SWA.

Hugging Face `Trainer` does the loop: AdamW with decoupled weight decay, cosine schedule
with warmup, evaluation every epoch, early stopping on validation loss with the best
checkpoint restored. From `train.swa.start_epoch` the LR anneals to `train.swa.lr`
(torch SWALR) and the weights are averaged at the end of every epoch
(torch AveragedModel); the averaged model is evaluated on val too, and `train.swa.keep`
picks which one is the stage's output. `train.device` picks CPU or CUDA; on CUDA, AMP
(bf16 where supported, else fp16) with the loss in float32; fp32 and deterministic on CPU.

`train.nproc` > 1 makes the stage relaunch itself under torchrun (DDP: NCCL on CUDA, gloo
on CPU), so `dvc repro` is unchanged. `train.batch_size` is the global batch (examples per
optimizer step): each process takes batch_size / (nproc * grad_accum_steps) per forward
pass, so the same params give the same optimisation at any nproc and the LR needs no
scaling. Only rank 0 writes outputs.

Inputs:  data/augment/train.jsonl, data/prepare/{val.jsonl,labels.json},
         data/alpha/alpha.json, models/tokenizer/, models/pretrain/ (its encoder, when that stage ran)
Outputs: models/train/ (model, tokenizer, pipeline.json), metrics/train.json,
         plots/train/history.{json,png}; .cache/runtime/train.json (device, wall time: MLflow only)
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

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, EarlyStoppingCallback

from stages import common
from stages.cli import cli
from stages.encoder import ModelParams, load_encoder, resolve_device, save_tokenizer
from stages.focal_loss import LossParams
from stages.frozen import CachedDataset, FrozenBottom, collate
from stages.swa import SWACallback, SwaParams, evaluate_best_and_swa
from stages.trainer import (  # noqa: F401  (FocalTrainer, make_compute_metrics, training_args: used by tests/bench)
    CKPT_DIR_ENV,
    FocalTrainer,
    val_metrics,
    checkpoint_dir,
    history_from_logs,
    make_compute_metrics,
    training_args,
)


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

    def __post_init__(self) -> None:
        common.check_ranges(self, "train")
        if self.batch_size % (self.nproc * self.grad_accum_steps):
            raise common.ParamsError(
                f"train.batch_size ({self.batch_size}) is the global batch and must be a multiple of "
                f"train.nproc x train.grad_accum_steps ({self.nproc} x {self.grad_accum_steps}); "
                f"change one of them")
        if self.swa.enabled and self.swa.start_epoch > self.max_epochs:
            raise common.ParamsError(
                f"train.swa.start_epoch ({self.swa.start_epoch}) must be <= train.max_epochs ({self.max_epochs}), "
                "or SWA would never average anything; or set train.swa.enabled: false")


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

    enc = common.tokenize(tokenizer, [r["text"] for r in rows], model_params.max_length, model_params.truncation)
    return Dataset.from_dict({**enc, "labels": [label2id[r["label"]] for r in rows]})


def trainable(model, tokenizer, splits: dict[str, list[dict]], label2id: dict[str, int], model_params: ModelParams,
              train_params: TrainParams):
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


def save_history_plot(history: list[dict], path: Path) -> None:
    """Static PNG of the curves (dvc plots' HTML needs a CDN, which offline users lack)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="val loss")
    ax_loss.set(xlabel="epoch", ylabel="focal loss", title="Loss")
    ax_loss.legend()
    ax_f1.plot(epochs, [h["val_macro_f1"] for h in history], "o-", color="tab:green")
    ax_f1.set(xlabel="epoch", ylabel="macro-F1", title="Validation macro-F1", ylim=(0, 1))
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
    label2id = {lab: i for i, lab in enumerate(labels)}
    splits = {"train": common.read_rows(root / "data/augment/train.jsonl"),
              "val": common.read_rows(root / "data/prepare/val.jsonl")}
    print(f"train {len(splits['train'])} rows, val {len(splits['val'])} rows, {len(labels)} classes, "
          f"vocab {len(tokenizer)}")
    pretrained = pretrained_encoder(root / "models/pretrain", model_params.name, tokenizer)
    if pretrained is not None:
        print(f"train: starting from the encoder of the pretrain stage ({pretrained})")
    model = build_model(tokenizer, meta, model_params, labels, seed, pretrained)
    model, (train_ds, val_ds), collator, frozen = trainable(model, tokenizer, splits, label2id, model_params,
                                                            train_params)
    swa_cb = SWACallback(train_params.swa.start_epoch) if train_params.swa.enabled else None
    early = EarlyStoppingCallback(early_stopping_patience=train_params.early_stopping_patience)
    start = time.perf_counter()
    with checkpoint_dir() as ckpt_dir:
        trainer = FocalTrainer(
            model=model,
            args=training_args(ckpt_dir, train_params, seed),
            train_dataset=train_ds,
            eval_dataset=val_ds,
            data_collator=collator,
            compute_metrics=make_compute_metrics(alpha, loss_params),
            callbacks=[early] + ([swa_cb] if swa_cb else []),
            alpha=alpha,
            loss_params=loss_params,
            train_params=train_params,
        )
        trainer.train()
        # Before the final evaluations below, which log at the last epoch too.
        history = history_from_logs(trainer.state.log_history)
        best, swa, kept = evaluate_best_and_swa(trainer, swa_cb, train_params.swa.keep)
        best, swa = val_metrics(best), swa and val_metrics(swa)
        if frozen is not None:
            frozen.full()  # the kept top layers and head on the frozen bottom: what evaluate loads
    epochs_run = len(history)
    if swa_cb is not None and swa is None:
        skipped = (f"early stopping ended training at epoch {epochs_run}, before train.swa.start_epoch="
                   f"{train_params.swa.start_epoch}: no weights were averaged, the best checkpoint is kept")
        print(f"train: WARNING: SWA did nothing: {skipped}")
        swa = {"snapshots": 0, "skipped": skipped}
    elif swa is not None:
        swa = {**swa, "snapshots": swa_cb.snapshots}
    metrics = {
        "best": {**best, "epoch": _best_epoch(history)},
        "swa": swa,
        "kept": kept,
        "epochs_run": epochs_run,
        "stop_reason": "early_stopping" if epochs_run < train_params.max_epochs else "max_epochs",
        "n_train": len(train_ds),
        "n_val": len(val_ds),
    }
    wall = time.perf_counter() - start
    if trainer.is_world_process_zero():  # under DDP every process holds the same model: one writes
        common.write_json(root / common.RUNTIME_DIR / "train.json", {
            "device": str(trainer.args.device), "processes": trainer.args.world_size, "wall_time_s": round(wall, 1),
            "train_samples_per_second": round(len(train_ds) * epochs_run / wall, 2)})
        save_outputs(root, trainer, tokenizer, labels, seed, model_params, loss_params, train_params, kept, metrics,
                     history)
    return metrics


def _best_epoch(history: list[dict]) -> int:
    return min(history, key=lambda h: h["val_loss"])["epoch"]


def load_alpha(path: Path, labels: list[str]) -> torch.Tensor:
    saved = common.read_json(path)
    if saved["labels"] != labels:
        raise ValueError(f"{path} was computed for labels {saved['labels']}, not {labels}: re-run `dvc repro`.")
    return torch.tensor(saved["alpha"], dtype=torch.float32)


def save_outputs(root, trainer, tokenizer, labels, seed, model_params, loss_params, train_params, kept, metrics, history):
    pipeline = {
        "seed": seed,
        "labels": labels,
        "model": common.as_dict(model_params),
        "loss": common.as_dict(loss_params),
        "train": common.as_dict(train_params),
        "kept": kept,
    }
    with common.atomic_dir(root / "models/train") as tmp:
        trainer.model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
        common.write_json(tmp / "pipeline.json", pipeline)
    common.write_json(root / "plots/train/history.json", history)
    save_history_plot(history, root / "plots/train/history.png")
    common.write_json(root / "metrics/train.json", metrics)
    print(json.dumps(metrics, indent=2))


def main() -> None:
    model_params = common.load_section(ModelParams, "model")
    common.check_tracked_model(model_params.name, "model.name")
    train_params = common.load_section(TrainParams, "train")
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

"""Task-adaptive pretraining: masked-LM training of the encoder on the train split's texts.

Gururangan et al. 2020 ("Don't Stop Pretraining", TAPT) continue a pretrained encoder's
masked-LM objective on the task's own unlabelled text before fine-tuning. Here it also trains
the extended tokenizer's new embedding rows, which otherwise start as sub-token means and see
only the labelled fine-tune. The encoder starts as `train` would start it (`encoder.load_encoder`);
the MLM head ties its output to the input embeddings, and a checkpoint without an MLM head
(e.g. the bundled sentence-transformers MiniLM) gets a fresh head transform. Masked tokens
follow BERT: 15% of the non-special tokens, 80% [MASK] / 10% random / 10% kept.

Validation reports the masked-LM loss per masked token over the whole val split, masked once
with the seed, so it is the same yardstick before and after every epoch. Only texts are read:
no label reaches this stage, and test is never read.

`pretrain.enabled: false` (the default) writes only pretrain_meta.json, and `train` starts from
the base model as before.

Inputs:  data/prepare/{train,val}.jsonl, models/tokenizer/
Outputs: models/pretrain/ (encoder weights + pretrain_meta.json), metrics/pretrain.json,
         plots/pretrain/history.json; .cache/runtime/pretrain.json (device, wall time: MLflow only)
Params:  seed, model.name, model.max_length, model.truncation, pretrain
Run:     python -m stages.pretrain
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from stages import common
from stages.cli import cli
from stages.encoder import ModelParams, device_args, load_encoder
from stages.text import tokenize


@dataclass(frozen=True)
class PretrainParams:
    enabled: bool
    epochs: Annotated[int, common.AT_LEAST_1]
    batch_size: Annotated[int, common.AT_LEAST_1]
    learning_rate: Annotated[float, common.POSITIVE]
    weight_decay: Annotated[float, common.NON_NEGATIVE]
    warmup_ratio: Annotated[float, common.Range(0, 1, high_open=True)]
    mask_probability: Annotated[float, common.FRACTION]
    device: Literal["auto", "cpu", "cuda"]  # auto: CUDA when torch sees a GPU (bf16/fp16 AMP there)

    def __post_init__(self) -> None:
        common.check_ranges(self, "pretrain")


def masked_token_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the masked tokens of `batch`, and their count.

    The vocabulary is scored at masked positions only: MiniLM's decoder (384 x 30.5k) costs as
    much per position as its whole encoder, and 85% of positions carry no label. Architectures
    whose MLM head is not `cls` (BERT) or `lm_head` (RoBERTa-like) score every position.
    """
    batch = dict(batch)
    labels = batch.pop("labels")
    at = labels != -100
    head = next((getattr(model, name) for name in ("cls", "lm_head") if hasattr(model, name)), None)
    if head is None:
        logits = model(**batch).logits[at]
    else:
        logits = head(model.base_model(**batch).last_hidden_state[at])
    return torch.nn.functional.cross_entropy(logits.float(), labels[at], reduction="sum"), int(at.sum())


def masked_lm_loss(model: Any, masked: dict[str, torch.Tensor], batch_size: int) -> float:
    """Mean cross-entropy per masked token over all of `masked` (any batch size gives the same)."""
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(masked["labels"]), batch_size):
            loss, n = masked_token_loss(model, {k: v[start:start + batch_size].to(model.device)
                                                for k, v in masked.items()})
            total, count = total + loss.item(), count + n
    return total / count


class MaskedLMTrainer(Trainer):
    """The Trainer with the loss of `masked_token_loss`: the mean over the batch's masked tokens,
    as the model's own MLM loss, without scoring the vocabulary at every position."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, count = masked_token_loss(model, inputs)
        loss = loss / max(count, 1)
        return (loss, None) if return_outputs else loss


class ValLossCallback(TrainerCallback):
    """The fixed-mask validation loss after every epoch."""

    def __init__(self, masked: dict[str, torch.Tensor], batch_size: int):
        self.masked, self.batch_size, self.val_losses = masked, batch_size, []

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self.val_losses.append(masked_lm_loss(model, self.masked, self.batch_size))
        model.train()


def history(log_history: list[dict], val_losses: list[float]) -> list[dict]:
    """One row per epoch: the Trainer's logged train loss and the fixed-mask val loss."""
    train_losses = [e["loss"] for e in log_history if "loss" in e]
    return [{"epoch": n, "train_loss": t, "val_loss": v} for n, (t, v) in enumerate(zip(train_losses, val_losses), 1)]


def training_args(out_dir: str, p: PretrainParams, seed: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=out_dir, num_train_epochs=p.epochs, per_device_train_batch_size=p.batch_size,
        learning_rate=p.learning_rate, weight_decay=p.weight_decay, warmup_steps=p.warmup_ratio,
        lr_scheduler_type="linear", logging_strategy="epoch", save_strategy="no", eval_strategy="no",
        seed=seed, data_seed=seed, report_to="none", dataloader_num_workers=0,
        **device_args(p.device, "pretrain.device"),
    )


def encoder_with_pooler(mlm_model: Any, source: str, tokenizer: Any, meta: dict, seed: int) -> Any:
    """The masked-LM model's encoder as a bare AutoModel, keeping the base checkpoint's pooler (the
    MLM model has none, and the classifier head of BERT-like models reads it)."""
    encoder = load_encoder(AutoModel, source, tokenizer, meta, seed)
    missing, unexpected = encoder.load_state_dict(mlm_model.base_model.state_dict(), strict=False)
    if unexpected or any("pooler" not in key for key in missing):
        raise RuntimeError(f"the masked-LM encoder does not match {source}: missing {missing}, unexpected {unexpected}")
    return encoder


def write_outputs(root: Path, meta: dict, encoder: Any, history_rows: list[dict], metrics: dict) -> None:
    """models/pretrain (the encoder, when there is one, and its meta), the history and the metrics."""
    with common.atomic_dir(root / "models/pretrain") as tmp:
        if encoder is not None:
            encoder.save_pretrained(tmp)
        common.write_json(tmp / "pretrain_meta.json", meta)
    common.write_json(root / "plots/pretrain/history.json", history_rows)
    common.write_json(root / "metrics/pretrain.json", metrics)


def run(
    params: PretrainParams,
    model_name: str,
    max_length: int,
    truncation: str,
    seed: int,
    root: Path = common.ROOT,
) -> dict[str, Any]:
    """Train the masked-LM on train's texts (when enabled); write the encoder, metrics and history."""
    from datasets import Dataset

    meta = {"enabled": params.enabled, "base_model": model_name, "seed": seed, "params": common.as_dict(params)}
    if not params.enabled:
        write_outputs(root, meta, None, [], {"enabled": False})
        print("pretrain: disabled (pretrain.enabled: false); train starts from the base model")
        return {"enabled": False}
    common.seed_everything(seed)
    tokenizer = AutoTokenizer.from_pretrained(root / "models/tokenizer")
    tok_meta = common.read_json(root / "models/tokenizer/tokenizer_meta.json")
    source = common.resolve_model_name(model_name, root)
    model = load_encoder(AutoModelForMaskedLM, source, tokenizer, tok_meta, seed)
    train_ds, val_ds = (Dataset.from_dict(tokenize(
        tokenizer, [r["text"] for r in common.read_rows(root / f"data/prepare/{split}.jsonl")], max_length,
        truncation)) for split in ("train", "val"))
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=params.mask_probability, seed=seed)
    val_masked = DataCollatorForLanguageModeling(tokenizer, mlm_probability=params.mask_probability,
                                                 seed=seed + 1)([dict(r) for r in val_ds])
    print(f"pretrain: masked-LM on {len(train_ds)} train texts for {params.epochs} epochs, "
          f"{int((val_masked['labels'] != -100).sum())} masked val tokens, vocab {len(tokenizer)}")
    before = masked_lm_loss(model, val_masked, params.batch_size * 2)
    callback = ValLossCallback(val_masked, params.batch_size * 2)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pretrain-") as scratch:
        trainer = MaskedLMTrainer(model=model, args=training_args(scratch, params, seed), train_dataset=train_ds,
                                  data_collator=collator, callbacks=[callback])
        trainer.train()
    common.write_json(root / common.RUNTIME_DIR / "pretrain.json",
                      {"device": str(trainer.args.device), "wall_time_s": round(time.perf_counter() - start, 1)})
    rows = history(trainer.state.log_history, callback.val_losses)
    metrics = {"enabled": True, "n_train_texts": len(train_ds), "epochs": params.epochs,
               "val_mlm_loss_before": before, "val_mlm_loss_after": rows[-1]["val_loss"]}
    write_outputs(root, {**meta, "vocab_size": len(tokenizer)},
                  encoder_with_pooler(trainer.model.cpu(), source, tokenizer, tok_meta, seed), rows, metrics)
    print(f"pretrain: val masked-LM loss {before:.3f} -> {metrics['val_mlm_loss_after']:.3f}")
    return metrics


def main() -> None:
    model = common.load_section(ModelParams, "model")
    common.check_tracked_model(model.name, "model.name")
    run(common.load_section(PretrainParams, "pretrain"), model.name, model.max_length, model.truncation,
        common.load_seed())


if __name__ == "__main__":
    cli("pretrain", main)

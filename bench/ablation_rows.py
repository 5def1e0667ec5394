"""The ablation's rows (bench/ablation.py): each a name, a label and the full `-S` overrides it runs with.

Every row pins each key any row changes, so a row queued after a default changes still runs as it ran.
"""

from __future__ import annotations

PLAIN = {"loss.gamma": 0, "alpha.method": "none", "loss.label_smoothing": 0, "train.swa.enabled": False,
         "augment.enabled": False, "tokenizer.max_new_tokens": 0, "train.max_epochs": 6, "train.swa.start_epoch": 3,
         "pretrain.enabled": False, "pretrain.epochs": 3,
         # the encoder and schedule every row up to minilm-final ran with (MiniLM's, patience from epoch 1)
         "model.name": "bundled-minilm", "model.freeze_layers": 0, "train.learning_rate": 5e-5,
         "train.patience_from": "first_epoch",
         # defaults since 2026-12-07 that no row before `default` ran with
         "model.truncation": "head", "train.sub_batches": 1, "train.temperature_scaling": False}
# Cumulative: each row is the previous one plus one remedy, through `final`, the mpnet defaults of 2026-12-04.
# PLAIN pins every key a row changes, so rows queued after a default changes still run as before.
STEPS = [
    ("plain-ce", "plain CE fine-tune", {}),
    ("weights", "+ class weights (alpha inverse)", {"alpha.method": "inverse"}),
    ("focal", "+ focal loss (gamma 2)", {"loss.gamma": 2}),
    ("smoothing", "+ label smoothing 0.1", {"loss.label_smoothing": 0.1}),
    ("swa", "+ SWA", {"train.swa.enabled": True}),
    ("backtrans", "+ back-translation", {"augment.enabled": True}),
    ("tokenizer", "+ extended tokenizer (the first default)", {"tokenizer.max_new_tokens": 200}),
    # Chosen on validation over 8 train/val splits (bench/choose.py): focal gamma 2 -> 0, 10 epochs, SWA from 4;
    # the candidates were picked after this ablation's test rows had been seen (BENCHMARKS.md, "Choosing").
    ("minilm-final", "gamma 0, 10 epochs, SWA from 4 (the MiniLM defaults before)",
     {"loss.gamma": 0, "train.max_epochs": 10, "train.swa.start_epoch": 4}),
    # Chosen on held-out rows (validation over 3 seeds, out-of-fold over 599 reviews; BENCHMARKS.md, "Encoders"
    # and "Cross-fitting"): mpnet with 8 of 12 layers frozen, a peak LR of 1e-4, 6 epochs, SWA from 3.
    ("final", "+ mpnet, 8 of 12 layers frozen, short schedule (the default of 2026-12-04)",
     {"model.name": "bundled-mpnet", "model.freeze_layers": 8, "train.learning_rate": 1e-4, "train.max_epochs": 6,
      "train.swa.start_epoch": 3}),
    # Task-adaptive masked-LM pretraining on the train texts (stages/pretrain.py), on top of the default.
    ("tapt", "+ masked-LM pretraining (TAPT), 3 epochs", {"pretrain.enabled": True}),
    ("tapt10", "+ TAPT for 10 epochs instead", {"pretrain.epochs": 10}),
]
# Leave one out on `final`: what each remedy was worth on the mpnet defaults of 2026-12-04.
LEAVE_ONE_OUT = [
    ("no-swa", "without SWA", {"train.swa.enabled": False}),
    ("no-backtrans", "without back-translation", {"augment.enabled": False}),
    ("no-weights", "without class weights (alpha none)", {"alpha.method": "none"}),
    ("no-smoothing", "without label smoothing", {"loss.label_smoothing": 0}),
    ("no-tokenizer", "without the extended tokenizer", {"tokenizer.max_new_tokens": 0}),
]
REMEDIES = {key: value for _, _, change in LEAVE_ONE_OUT for key, value in change.items()}  # all five undone
WITHOUT = [(name, f"default of 12-04 {label}", change) for name, label, change in LEAVE_ONE_OUT] + [
    ("plain-mpnet", "default of 12-04 without weights, smoothing, SWA, back-translation, tokenizer (plain CE)",
     REMEDIES),
]
# params.yaml's default since 2026-12-07: `final` without back-translation (chosen out of fold, BENCHMARKS.md,
# "Cross-fitting"), long reviews cut to their head and tail, batches run as 4 sub-batches of similar lengths.
DEFAULT_ROW = "default"
TODAY = ("default", "the default today: no back-translation, head and tail, sub-batches",
         {"augment.enabled": False, "model.truncation": "head_tail", "train.sub_batches": 4})
DEFAULT_WITHOUT = [(f"default-{name}", f"default today {label}", change)
                   for name, label, change in LEAVE_ONE_OUT if name != "no-backtrans"]
# The row each row is compared with; a row not here is compared with the STEPS row above it.
BASE = {**{name: "final" for name, _, _ in WITHOUT}, DEFAULT_ROW: "no-backtrans",
        **{name: DEFAULT_ROW for name, _, _ in DEFAULT_WITHOUT}}
# bench/encoder.py ran row `default`'s exact params on seeds 42-44 (profile `default` of bench/results/crossfit.json,
# named enc-head-tail-s<seed> before that profile's rename): those runs are the row's, not trained twice.
# `recorded_runs` rebuilds each one's params from its commit and `-S` overrides, and `row_of` checks them.
SAME_RUNS = {"enc-head-tail": DEFAULT_ROW}

def rows() -> list[tuple[str, str, dict]]:
    """(name, label, full overrides) per row: cumulative over STEPS, then WITHOUT's changes to `final`,
    then `default` and DEFAULT_WITHOUT's changes to it."""
    out, current = [], dict(PLAIN)
    for name, label, change in STEPS:
        current = {**current, **change}
        out.append((name, label, dict(current)))
    final = next(overrides for name, _, overrides in out if name == "final")
    default = {**final, **TODAY[2]}
    return (out + [(name, label, {**final, **change}) for name, label, change in WITHOUT] + [(*TODAY[:2], default)]
            + [(name, label, {**default, **change}) for name, label, change in DEFAULT_WITHOUT])

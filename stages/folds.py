"""Cross-fitting: which labelled reviews each fold model trains on and which it is scored on.

`train.folds: K` > 1 pools the train and validation splits of `prepare` and splits the pool into K
stratified folds by the seed (sklearn's StratifiedKFold). Fold model k trains on the other K - 1
folds and is early-stopped, and its SWA/best choice made, on fold k; its predictions on fold k are
out-of-fold (OOF). Together the K folds score every labelled review once, with a model that never
trained on it: that is the validation signal early stopping's report, `swa.keep: auto`, the
`bias_tuned` rule and bench/choose.py use. A back-translated paraphrase (augment's "orig_id")
belongs to the fold of the review it came from, so no fold model trains on a paraphrase of a
review it is scored on. `evaluate` scores the ensemble: the mean of the K models' probabilities.

K = 1 keeps `prepare`'s split: train on train (+ its paraphrases), validate on val.

Used by: stages/train.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Fold:
    name: str           # "fold-1" ... (K > 1) or "single" (K = 1); a sub-dir of models/train for K > 1
    train: list[dict]   # reviews and paraphrases the model trains on
    heldout: list[dict]  # reviews it is early-stopped on and scored on (never a paraphrase)


def is_paraphrase(row: dict) -> bool:
    return row.get("source") == "backtranslation"


def assign_folds(labels: list[str], k: int, seed: int) -> np.ndarray:
    """Fold index (0..k-1) of each row: stratified by label, shuffled by `seed`."""
    from sklearn.model_selection import StratifiedKFold

    counts = {lab: labels.count(lab) for lab in set(labels)}
    if (rare := sorted(lab for lab, n in counts.items() if n < k)):
        raise ValueError(f"train.folds is {k} but class(es) {rare} have fewer labelled reviews than that "
                         f"({', '.join(f'{lab}: {counts[lab]}' for lab in rare)}): every fold needs each class; "
                         "lower train.folds or add reviews")
    which = np.empty(len(labels), dtype=int)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        which[held] = fold
    return which


def plan(train_rows: list[dict], val_rows: list[dict], k: int, seed: int) -> list[Fold]:
    """The fits of one train stage run: one for K = 1, K fold fits over train + val for K > 1.

    `train_rows` is augment's output (reviews, then paraphrases with "orig_id"); `val_rows` prepare's."""
    if k == 1:
        return [Fold("single", train_rows, val_rows)]
    reviews = [r for r in train_rows if not is_paraphrase(r)] + val_rows
    which = assign_folds([r["label"] for r in reviews], k, seed)
    fold_of = {r["id"]: int(f) for r, f in zip(reviews, which)}
    if len(fold_of) != len(reviews):
        raise ValueError("data/augment/train.jsonl and data/prepare/val.jsonl share review ids: re-run the "
                         "pipeline from prepare (`dvc repro --force prepare`)")
    paraphrases = [r for r in train_rows if is_paraphrase(r)]
    if (orphans := [p["id"] for p in paraphrases if p.get("orig_id") not in fold_of]):
        raise ValueError(f"data/augment/train.jsonl: paraphrase(s) {orphans[:3]} have an orig_id that is no "
                         "review of data/prepare: re-run the augment stage (`dvc repro augment`)")
    folds = []
    for f in range(k):
        train = [r for r in reviews if fold_of[r["id"]] != f] + [p for p in paraphrases if fold_of[p["orig_id"]] != f]
        folds.append(Fold(f"fold-{f + 1}", train, [r for r in reviews if fold_of[r["id"]] == f]))
    return folds


def out_of_fold(folds: list[Fold], probs: list[np.ndarray]) -> tuple[list[str], list[str], np.ndarray]:
    """(ids, labels, probabilities) of every held-out review, each scored by the model that held it out,
    ordered by id (the same order whatever K)."""
    ids = [r["id"] for fold in folds for r in fold.heldout]
    labels = [r["label"] for fold in folds for r in fold.heldout]
    stacked = np.concatenate(probs)
    order = sorted(range(len(ids)), key=ids.__getitem__)
    return [ids[i] for i in order], [labels[i] for i in order], stacked[order]

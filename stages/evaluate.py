"""Score the trained classifier on the held-out test split: quality, calibration, plots.

Inputs:  models/train/ (HF model(s) + tokenizer + pipeline.json + heldout.json: the probabilities
         train gave the rows it held out), data/prepare/{test.jsonl,labels.json}
Outputs: metrics/evaluate.json (accuracy, macro/weighted F1, per-class P/R/F1, ECE, CE loss of
         argmax predictions, all of the temperature-scaled probabilities the model gives; `calibration`:
         train's temperature, test ECE and CE without it, and on the held-out rows the cross-validated
         effect of scaling; and `bias_tuned`: the same test scores with per-class logit biases
         tuned for macro-F1 on the held-out rows: validation, or out-of-fold with train.folds > 1;
         a decision rule for the minority classes),
         plots/evaluate/predictions.csv (dvc confusion plot), calibration.json (reliability
         diagram), confusion.png (static image: `dvc plots show` HTML needs a CDN to render)
Params:  evaluate (batch_size, ece_bins, bias_search)
Run:     python -m stages.evaluate
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import numpy as np

from stages.calibration import apply_temperature, calibration_bins, cross_validated_temperature, \
    expected_calibration_error
from stages.classifier import Classifier
from stages.cli import cli
from stages.common import (
    AT_LEAST_1,
    ROOT,
    Range,
    check_ranges,
    load_section,
    read_json,
    read_rows,
    save_png,
    write_json,
    write_text,
)
from stages.metrics import macro_f1


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: Annotated[int, AT_LEAST_1]  # inference only: memory, not results, depends on it
    # Equal-width confidence bins for the expected calibration error; one bin measures nothing.
    ece_bins: Annotated[int, Range(2, why="one bin cannot tell confidences apart")]
    bias_search: Annotated[float, Range(0, why="a half-width in log-probability units")]

    def __post_init__(self) -> None:
        check_ranges(self, "evaluate")


def load_split(path: Path, labels: list[str]) -> tuple[list[str], list[str], np.ndarray]:
    """Ids, texts and class ids of a prepare-format jsonl file; unknown labels fail by row."""
    rows = read_rows(path)
    index = {label: i for i, label in enumerate(labels)}
    for n, row in enumerate(rows, 1):
        if row["label"] not in index:
            raise ValueError(f"{path}: row {n} has label {row['label']!r}, not in {labels}")
    return [str(r["id"]) for r in rows], [r["text"] for r in rows], np.array([index[r["label"]] for r in rows])


def classification_metrics(probs: np.ndarray, y: np.ndarray, labels: list[str], ece_bins: int) -> dict:
    """Accuracy, F1s, per-class P/R/F1/support, ECE and cross-entropy of predictions `probs`."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss, precision_recall_fscore_support

    classes = list(range(len(labels)))
    pred = probs.argmax(axis=1)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=classes, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": macro_f1(y, pred, len(labels)),
        "weighted_f1": float(f1_score(y, pred, labels=classes, average="weighted", zero_division=0)),
        "per_class": {
            label: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, label in enumerate(labels)
        },
        "ece": expected_calibration_error(probs, y, ece_bins),
        "ce_loss": float(log_loss(y, probs, labels=classes)),
        "n_test": int(len(y)),
    }


def biased_argmax(probs: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Class ids of argmax(log p + bias): plain argmax when bias is 0."""
    return (np.log(np.clip(probs, 1e-12, None)) + bias).argmax(axis=1)


def macro_f1_with_bias(probs: np.ndarray, y: np.ndarray, bias: np.ndarray) -> float:
    return macro_f1(y, biased_argmax(probs, bias), len(bias))


def tune_bias(probs: np.ndarray, y: np.ndarray, n_labels: int, half_width: float, step: float = 0.1) -> np.ndarray:
    """Per-class biases b for argmax(log p + b) that maximise macro-F1 on (probs, y).

    Coordinate ascent over a grid of [-half_width, half_width]: each class's bias in turn
    (class 0 stays 0: a shared shift changes no argmax), until a full pass changes nothing.
    Ties keep the bias nearest 0, so b = 0 (plain argmax) wins unless something beats it.
    """
    grid = sorted(np.round(np.arange(-half_width, half_width + step / 2, step), 6), key=abs)
    bias = np.zeros(n_labels)
    best, changed = macro_f1_with_bias(probs, y, bias), True
    while changed and half_width > 0:
        changed = False
        for c in range(1, n_labels):
            for value in grid:
                trial = bias.copy()
                trial[c] = value
                if (s := macro_f1_with_bias(probs, y, trial)) > best + 1e-12:
                    best, bias, changed = s, trial, True
    return bias


def cross_validated_bias_macro_f1(probs: np.ndarray, y: np.ndarray, n_labels: int, half_width: float,
                                  k: int = 5) -> float | None:
    """Macro-F1 over the held-out rows of the bias rule as it would meet new rows: each of k stratified
    parts (in row order, no shuffling) is decided with the biases tuned on the other k - 1. Set against
    the plain argmax macro-F1 of the same rows, it says whether tuning biases generalises; the in-sample
    `val_macro_f1` cannot. None when a class has fewer than k held-out rows (no stratified k parts)."""
    from sklearn.model_selection import StratifiedKFold

    if np.bincount(y, minlength=n_labels).min() < k:
        return None
    pred = np.empty_like(y)
    for fit_rows, score_rows in StratifiedKFold(n_splits=k).split(probs, y):
        bias = tune_bias(probs[fit_rows], y[fit_rows], n_labels, half_width)
        pred[score_rows] = biased_argmax(probs[score_rows], bias)
    return macro_f1(y, pred, n_labels)


def bias_tuned_metrics(val_probs: np.ndarray, val_y: np.ndarray, probs: np.ndarray, y: np.ndarray,
                       labels: list[str], half_width: float) -> dict:
    """Test accuracy and F1s of argmax(log p + b), b tuned on validation (tune_bias), and the rule's
    cross-validated score on validation (cross_validated_bias_macro_f1): what choosing it may look at."""
    from sklearn.metrics import f1_score

    bias = tune_bias(val_probs, val_y, len(labels), half_width)
    pred = biased_argmax(probs, bias)
    per_class = f1_score(y, pred, labels=list(range(len(labels))), average=None, zero_division=0)
    return {
        "bias": {label: float(b) for label, b in zip(labels, bias)},
        "val_macro_f1_argmax": macro_f1_with_bias(val_probs, val_y, np.zeros(len(labels))),
        "val_macro_f1": macro_f1_with_bias(val_probs, val_y, bias),
        "val_macro_f1_cross_validated": cross_validated_bias_macro_f1(val_probs, val_y, len(labels), half_width),
        "accuracy": float((pred == y).mean()),
        "macro_f1": macro_f1_with_bias(probs, y, bias),
        "per_class_f1": {label: float(f) for label, f in zip(labels, per_class)},
    }


def calibration_metrics(raw: np.ndarray, y: np.ndarray, val_raw: np.ndarray, val_y: np.ndarray,
                        temperature: float, ece_bins: int) -> dict:
    """train's temperature (1: none), the test ECE and cross-entropy without it, and on the held-out rows
    whether scaling helps rows it was not fitted on (calibration.cross_validated_temperature): what
    choosing `train.temperature_scaling` may look at."""
    from sklearn.metrics import log_loss

    return {"temperature": temperature, "ece_unscaled": expected_calibration_error(raw, y, ece_bins),
            "ce_loss_unscaled": float(log_loss(y, raw, labels=list(range(raw.shape[1])))),
            "heldout_cross_validated": cross_validated_temperature(val_raw, val_y, ece_bins)}


def predictions_csv(ids: list[str], y: np.ndarray, probs: np.ndarray, labels: list[str]) -> str:
    """CSV text with columns id, actual, predicted, confidence (label names, not ids)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "actual", "predicted", "confidence"])
    for i, row_id in enumerate(ids):
        k = int(probs[i].argmax())
        writer.writerow([row_id, labels[y[i]], labels[k], f"{probs[i, k]:.6f}"])
    return buf.getvalue()


def save_confusion_png(path: Path, y: np.ndarray, pred: np.ndarray, labels: list[str]) -> None:
    """Annotated confusion-matrix image, written atomically."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on CI or in `dvc repro`
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

    cm = confusion_matrix(y, pred, labels=list(range(len(labels))))
    size = 2.5 + 0.6 * len(labels)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ConfusionMatrixDisplay(cm, display_labels=labels).plot(ax=ax, values_format="d", colorbar=False,
                                                             cmap="Blues", xticks_rotation=45)
    ax.set_title(f"Test confusion matrix (n={len(y)})")
    save_png(fig, path)


def heldout(model_dir: Path, labels: list[str]) -> tuple[np.ndarray, np.ndarray, str]:
    """(probabilities, class ids, what) of the rows the trained model(s) did not train on, as train scored
    them (models/train/heldout.json): "validation" for one model, "out-of-fold" for a cross-fitted run."""
    saved = read_json(model_dir / "heldout.json")
    index = {label: i for i, label in enumerate(labels)}
    return np.array(saved["probs"], dtype=np.float64), np.array([index[lab] for lab in saved["labels"]]), saved["what"]


def run(params: EvaluateParams, model_dir: Path = ROOT / "models/train", data_dir: Path = ROOT / "data/prepare",
        metrics_path: Path = ROOT / "metrics/evaluate.json", plots_dir: Path = ROOT / "plots/evaluate") -> dict:
    """Predict the test split with the trained model and write metrics and plots."""
    for path, stage in ((model_dir / "pipeline.json", "train"), (model_dir / "heldout.json", "train"),
                        (data_dir / "test.jsonl", "prepare"), (data_dir / "labels.json", "prepare")):
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run `dvc repro {stage}` first")
    pipeline = read_json(model_dir / "pipeline.json")
    labels = read_json(data_dir / "labels.json")
    if pipeline["labels"] != labels:
        raise ValueError(f"{model_dir / 'pipeline.json'} labels {pipeline['labels']} differ from "
                         f"{data_dir / 'labels.json'} {labels}: re-run the train stage on this data")
    ids, texts, y = load_split(data_dir / "test.jsonl", labels)
    val_raw, val_y, what = heldout(model_dir, labels)
    print(f"evaluate: {len(texts)} test rows, {len(val_y)} {what} rows, {len(labels)} classes, model {model_dir}")
    classifier = Classifier.load(model_dir)
    # Texts are cut as in training (model.max_length / model.truncation, saved in pipeline.json); the
    # probabilities before train's temperature, to report what scaling them changed.
    raw = replace(classifier, temperature=1.0).predict_proba(texts, params.batch_size, "evaluate")
    probs = apply_temperature(raw, classifier.temperature)
    metrics = classification_metrics(probs, y, labels, params.ece_bins)
    metrics["calibration"] = calibration_metrics(raw, y, val_raw, val_y, classifier.temperature, params.ece_bins)
    # on the unscaled probabilities (a temperature would only rescale the bias grid), as bench/decision.py
    metrics["bias_tuned"] = bias_tuned_metrics(val_raw, val_y, raw, y, labels, params.bias_search)
    save_confusion_png(plots_dir / "confusion.png", y, probs.argmax(axis=1), labels)
    write_text(plots_dir / "predictions.csv", predictions_csv(ids, y, probs, labels))
    write_json(plots_dir / "calibration.json", calibration_bins(probs, y, params.ece_bins))
    write_json(metrics_path, metrics)
    print(f"evaluate: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, "
          f"ECE {metrics['ece']:.4f} (temperature {classifier.temperature:.3f}; "
          f"{metrics['calibration']['ece_unscaled']:.4f} without); "
          f"with validation-tuned biases {metrics['bias_tuned']['bias']}: "
          f"macro-F1 {metrics['bias_tuned']['macro_f1']:.4f}; wrote {metrics_path} and 3 files in {plots_dir}")
    return metrics


def main() -> None:
    run(load_section(EvaluateParams, "evaluate"))


if __name__ == "__main__":
    cli("evaluate", main)

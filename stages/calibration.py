"""Calibration: how far a classifier's confidence is from its accuracy, and temperature scaling to fix it.

Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks") divides the log
class probabilities by one scalar T fitted for the lowest cross-entropy on held-out rows, then
renormalises: p_T = softmax(log p / T). T < 1 sharpens, T > 1 softens; the argmax, so accuracy and
every F1, is unchanged. Written on probabilities rather than logits, so it applies the same way to a
softmax head, the ordinal CORN head and the mean probabilities of a cross-fitted ensemble.

Used by: stages/train.py (fits T on the held-out rows, saved in pipeline.json), stages/classifier.py
(applies it to every prediction), stages/evaluate.py (ECE, and whether T helps on rows it was not fitted on).
"""

from __future__ import annotations

import numpy as np

# log T is searched in [-LOG_T_LIMIT, LOG_T_LIMIT]: T from 1/20 to 20, far beyond what a trained model needs
LOG_T_LIMIT = float(np.log(20.0))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) over the last axis, in float64; T = 1 returns the probabilities unchanged."""
    probs = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0:
        return probs
    z = np.log(np.clip(probs, 1e-12, None)) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def cross_entropy(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-probability of the true classes."""
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The T minimising the cross-entropy of apply_temperature(probs, T) on (probs, y), by bounded
    scalar search over log T (the loss is convex in 1/T: one minimum)."""
    from scipy.optimize import minimize_scalar

    best = minimize_scalar(lambda log_t: cross_entropy(apply_temperature(probs, float(np.exp(log_t))), y),
                           bounds=(-LOG_T_LIMIT, LOG_T_LIMIT), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(best.x))


def calibration_bins(probs: np.ndarray, y: np.ndarray, n_bins: int) -> list[dict]:
    """Reliability diagram: mean max-prob confidence, accuracy and count per non-empty bin.

    Bins are equal-width over [0, 1], bin b = (b/n, (b+1)/n] (Guo et al. 2017).
    """
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.searchsorted(edges[1:-1], confidence, side="left")
    return [
        {"confidence": float(confidence[which == b].mean()), "accuracy": float(correct[which == b].mean()),
         "count": int((which == b).sum())}
        for b in range(n_bins) if (which == b).any()
    ]


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    """ECE = sum over bins of (bin size / n) * |bin accuracy - bin mean confidence|."""
    bins = calibration_bins(probs, y, n_bins)
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / len(y))


def cross_validated_temperature(probs: np.ndarray, y: np.ndarray, n_bins: int, k: int = 5) -> dict | None:
    """Whether temperature scaling helps rows it was not fitted on: each of k stratified parts of the
    held-out rows (in row order) is scaled with the T fitted on the other k - 1, and the cross-entropy
    and ECE of those predictions are set against the unscaled ones of the same rows. None when a class
    has fewer than k rows."""
    from sklearn.model_selection import StratifiedKFold

    if np.bincount(y, minlength=probs.shape[1]).min() < k:
        return None
    scaled = np.empty_like(probs, dtype=np.float64)
    for fit_rows, score_rows in StratifiedKFold(n_splits=k).split(probs, y):
        scaled[score_rows] = apply_temperature(probs[score_rows], fit_temperature(probs[fit_rows], y[fit_rows]))
    return {"ce_loss": cross_entropy(probs, y), "ce_loss_scaled": cross_entropy(scaled, y),
            "ece": expected_calibration_error(probs, y, n_bins),
            "ece_scaled": expected_calibration_error(scaled, y, n_bins)}

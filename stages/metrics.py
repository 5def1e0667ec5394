"""The one macro-F1 that `train` (validation, early stopping reports, keep) and `evaluate` (test) share.

Its own module, so that `train` depends on this definition and not on all of stages/evaluate.py
(whose every edit would otherwise re-run training under DVC).
"""

from __future__ import annotations


def macro_f1(y_true, y_pred, n_classes: int) -> float:
    """Unweighted mean F1 over all `n_classes` classes, the one definition `train` and `evaluate` share.

    A class absent from both labels and predictions still counts (F1 0), so the score keeps
    one scale whatever a split happens to contain; 0/0 precision or recall is 0, not a warning.
    """
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, labels=list(range(n_classes)), average="macro", zero_division=0))

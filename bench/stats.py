"""Paired comparison over resampled train/validation splits, with the Nadeau-Bengio correction.

Each seed draws its own train/validation split (Monte Carlo cross-validation), so the
splits share reviews and the per-split differences between two candidates are positively
correlated: the plain standard error of their mean understates the uncertainty. Nadeau &
Bengio (2003, "Inference for the generalization error", Machine Learning 52) widen the
variance of the mean of J differences from s^2 / J to (1/J + n_test/n_train) * s^2, with s^2
the sample variance of the differences and n_test/n_train the sizes of one split's
validation and train parts. Mean and std of repeats are `tools.grid.mean_std`.

Run: python -c "from bench.stats import paired; print(paired([0.03, 0.02, -0.01], 509, 90))"
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tools.grid import mean_std


def paired(diffs: Sequence[float], n_train: int | None = None, n_test: int | None = None) -> dict:
    """{"mean", "se", "se_corrected", "n", "better"} of per-split differences (candidate minus baseline).

    `se` is s / sqrt(J), right only when the splits are independent; `se_corrected` is
    sqrt((1/J + n_test/n_train) * s^2). Without the split sizes (both None) there is nothing
    to correct for and `se_corrected` equals `se`. `better` counts the differences > 0.
    """
    if len(diffs) < 2:
        raise ValueError(f"paired needs the differences on at least 2 splits, got {len(diffs)}")
    if (n_train is None) != (n_test is None):
        raise ValueError("give both n_train and n_test (the sizes of one split's parts), or neither")
    if n_train is not None and (n_train <= 0 or n_test <= 0):
        raise ValueError(f"split sizes must be positive, got n_train={n_train}, n_test={n_test}")
    mean, std = mean_std(list(diffs))
    ratio = n_test / n_train if n_train is not None else 0.0
    se = std / math.sqrt(len(diffs))
    # sqrt((1/J + r) * s^2) = (s / sqrt(J)) * sqrt(1 + J r): exactly `se` when r = 0
    return {"mean": mean, "se": se, "se_corrected": se * math.sqrt(1 + len(diffs) * ratio),
            "n": len(diffs), "better": sum(d > 0 for d in diffs)}


def split_sizes(folds: int, n_train: int | None, n_val: int | None) -> tuple[int | None, int | None]:
    """(n_train, n_test) of one fit for `paired`'s correction: K fold fits train on K - 1 folds and hold
    out one (n_test / n_train = 1 / (K - 1)); a single split trains on n_train rows and holds out n_val."""
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    return (folds - 1, 1) if folds > 1 else (n_train, n_val)

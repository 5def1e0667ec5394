"""bench/stats.py: the paired mean, its plain and Nadeau-Bengio corrected standard errors."""

import math

import pytest

from bench.stats import paired, split_sizes


def test_paired_matches_a_hand_computation():
    # diffs -1, 0, 1, 4: mean 1; squared deviations 4 + 1 + 0 + 9 = 14, s^2 = 14/3
    # plain SE sqrt(s^2 / 4) = sqrt(7/6); corrected sqrt((1/4 + 2/8) * 14/3) = sqrt(7/3)
    out = paired([-1.0, 0.0, 1.0, 4.0], n_train=8, n_test=2)
    assert out["mean"] == pytest.approx(1.0)
    assert out["se"] == pytest.approx(math.sqrt(7 / 6))
    assert out["se_corrected"] == pytest.approx(math.sqrt(7 / 3))
    assert out["n"] == 4
    assert out["better"] == 2  # 1 and 4; a tie (0) is not "better"


def test_corrected_equals_plain_without_split_sizes():
    out = paired([0.03, 0.02, -0.01])
    # s = 0.02082, SE = s / sqrt(3) = 0.01202
    assert out["se"] == pytest.approx(0.0120185, abs=1e-6)
    assert out["se_corrected"] == out["se"]


def test_correction_widens_by_the_test_to_train_ratio():
    # this repo's splits: 509 train, 90 validation reviews, 8 seeds
    diffs = [0.01, -0.02, 0.03, 0.00, 0.02, 0.01, -0.01, 0.04]
    out = paired(diffs, n_train=509, n_test=90)
    assert out["se_corrected"] / out["se"] == pytest.approx(math.sqrt(1 + 8 * 90 / 509))  # about 1.55


def test_paired_rejects_too_few_splits_and_half_given_sizes():
    with pytest.raises(ValueError, match="at least 2"):
        paired([0.1])
    with pytest.raises(ValueError, match="both n_train and n_test"):
        paired([0.1, 0.2], n_train=500)
    with pytest.raises(ValueError, match="positive"):
        paired([0.1, 0.2], n_train=0, n_test=90)


def test_split_sizes_of_k_fold_fits_and_of_a_single_split():
    # K fold fits: each trains on K - 1 folds and holds out one, whatever the rows
    assert split_sizes(3, 509, 90) == (2, 1)
    assert split_sizes(5, None, None) == (4, 1)
    # one split: its own sizes
    assert split_sizes(1, 509, 90) == (509, 90)
    with pytest.raises(ValueError, match="folds must be >= 1"):
        split_sizes(0, 509, 90)

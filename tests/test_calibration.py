"""Tests for stages.calibration: ECE by hand, and temperature scaling (exact math, recovery, cross-validation)."""

from __future__ import annotations

import numpy as np
import pytest

from stages.calibration import (
    apply_temperature,
    calibration_bins,
    cross_entropy,
    cross_validated_temperature,
    expected_calibration_error,
    fit_temperature,
)

# Four predictions; with 5 bins, confidences 0.9 and 0.85 share bin (0.8, 1], 0.7 is in
# (0.6, 0.8] and 0.5 in (0.4, 0.6].
PROBS = np.array([[0.9, 0.05, 0.05], [0.7, 0.2, 0.1], [0.1, 0.85, 0.05], [0.5, 0.25, 0.25]])
Y = np.array([0, 1, 1, 0])  # row 1 is wrong, the others right


def _overconfident(n: int, true_t: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """softmax(z) of random logits z, with labels drawn from softmax(z / true_t): the probabilities are
    miscalibrated by exactly the temperature true_t."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, size=(n, 3))
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    truth = apply_temperature(probs, true_t)
    y = np.array([rng.choice(3, p=p) for p in truth])
    return probs, y


def test_ece_matches_hand_computation():
    # bin (0.8,1]: 2 rows, conf 0.875, acc 1 -> 2*0.125; (0.6,0.8]: conf 0.7, acc 0 -> 0.7;
    # (0.4,0.6]: conf 0.5, acc 1 -> 0.5.  ECE = (0.25 + 0.7 + 0.5) / 4.
    assert expected_calibration_error(PROBS, Y, n_bins=5) == pytest.approx(1.45 / 4)


def test_calibration_bins_lists_non_empty_bins_in_order():
    bins = calibration_bins(PROBS, Y, n_bins=5)
    assert [b["count"] for b in bins] == [1, 1, 2]
    assert [b["confidence"] for b in bins] == pytest.approx([0.5, 0.7, 0.875])
    assert [b["accuracy"] for b in bins] == [1.0, 0.0, 1.0]


def test_calibration_bins_start_at_zero_and_include_their_upper_edge():
    # 10 classes, 10 bins: confidence 0.1 (uniform) belongs to (0, 0.1], 0.15 to (0.1, 0.2].
    probs = np.vstack([np.full(10, 0.1), np.r_[0.15, np.full(9, 0.85 / 9)]])
    bins = calibration_bins(probs, np.array([3, 0]), n_bins=10)
    assert [b["count"] for b in bins] == [1, 1]
    assert [b["confidence"] for b in bins] == pytest.approx([0.1, 0.15])
    assert [b["accuracy"] for b in bins] == [0.0, 1.0]


def test_ece_is_zero_when_confidence_equals_accuracy():
    probs = np.tile([0.8, 0.1, 0.1], (10, 1))
    y = np.array([0] * 8 + [1, 2])  # 8 of 10 right at confidence 0.8
    assert expected_calibration_error(probs, y, n_bins=10) == pytest.approx(0.0, abs=1e-12)


def test_temperature_one_leaves_probabilities_unchanged():
    np.testing.assert_array_equal(apply_temperature(PROBS, 1.0), PROBS)


def test_temperature_divides_the_log_probabilities_and_keeps_the_argmax():
    for t in (0.3, 2.5):
        scaled = apply_temperature(PROBS, t)
        expected = PROBS ** (1 / t) / (PROBS ** (1 / t)).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(scaled, expected, rtol=1e-12)
        np.testing.assert_array_equal(scaled.argmax(axis=1), PROBS.argmax(axis=1))
    # T > 1 softens (lower top confidence), T < 1 sharpens
    assert (apply_temperature(PROBS, 2.5).max(axis=1) < PROBS.max(axis=1)).all()
    assert (apply_temperature(PROBS, 0.3).max(axis=1) > PROBS.max(axis=1)).all()


@pytest.mark.parametrize("true_t", [0.5, 2.0])
def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_with(true_t):
    probs, y = _overconfident(20000, true_t)
    assert fit_temperature(probs, y) == pytest.approx(true_t, rel=0.08)


def test_fitted_temperature_is_a_minimum_of_the_cross_entropy():
    probs, y = _overconfident(2000, 1.7, seed=3)
    t = fit_temperature(probs, y)
    at = cross_entropy(apply_temperature(probs, t), y)
    assert at < cross_entropy(probs, y)
    for nearby in (t * 0.97, t / 0.97):
        assert at <= cross_entropy(apply_temperature(probs, nearby), y)


def test_cross_entropy_is_the_mean_negative_log_probability_of_the_true_class():
    assert cross_entropy(PROBS, Y) == pytest.approx(-np.mean(np.log([0.9, 0.2, 0.85, 0.5])))


def test_cross_validated_temperature_helps_overconfident_rows_it_was_not_fitted_on():
    probs, y = _overconfident(600, 2.0, seed=1)
    cv = cross_validated_temperature(probs, y, n_bins=10)
    assert cv["ce_loss"] == pytest.approx(cross_entropy(probs, y))
    assert cv["ece"] == pytest.approx(expected_calibration_error(probs, y, 10))
    assert cv["ce_loss_scaled"] < cv["ce_loss"] - 0.05 and cv["ece_scaled"] < cv["ece"]


def test_cross_validated_temperature_scores_rows_with_a_temperature_not_fitted_on_them():
    """Out of sample the scaled cross-entropy cannot beat the temperature fitted on every row (in sample)."""
    probs, y = _overconfident(500, 1.0, seed=2)
    in_sample = cross_entropy(apply_temperature(probs, fit_temperature(probs, y)), y)
    assert cross_validated_temperature(probs, y, n_bins=10)["ce_loss_scaled"] > in_sample


def test_cross_validated_temperature_needs_k_rows_of_every_class():
    probs = np.tile([0.6, 0.3, 0.1], (12, 1))
    assert cross_validated_temperature(probs, np.array([0] * 8 + [1] * 4), n_bins=10) is None

"""Tests for stages.evaluate: calibration math by hand, metrics vs sklearn, a tiny-BERT run()."""

from __future__ import annotations

import csv
import io
import json
import math
import warnings

import numpy as np
import pytest

from stages.common import ParamsError, write_json, write_jsonl
from stages.evaluate import (
    EvaluateParams,
    classification_metrics,
    bias_tuned_metrics,
    cross_validated_bias_macro_f1,
    macro_f1_with_bias,
    biased_argmax,
    load_split,
    predictions_csv,
    run,
    tune_bias,
)
from stages.calibration import expected_calibration_error
from stages.classifier import Classifier
from stages.metrics import macro_f1
from tiny_bert import build_tiny_bert
from tiny_classifier import write_heldout

LABELS = ["negative", "neutral", "positive"]
# Four predictions; with 5 bins, confidences 0.9 and 0.85 share bin (0.8, 1], 0.7 is in
# (0.6, 0.8] and 0.5 in (0.4, 0.6].
PROBS = np.array([[0.9, 0.05, 0.05], [0.7, 0.2, 0.1], [0.1, 0.85, 0.05], [0.5, 0.25, 0.25]])
Y = np.array([0, 1, 1, 0])  # row 1 is wrong, the others right


# Six test rows over four classes: "c" is never predicted and "d" is neither a label nor a prediction.
# Predictions 0 0 1 1 0 0 for labels 0 0 0 1 1 2: F1 is a 2*2/(2*2+2+1) = 4/7, b 2*1/(2*1+1+1) = 1/2, c 0, d 0.
HAND_LABELS = ["a", "b", "c", "d"]
HAND_PROBS = np.array([[0.7, 0.1, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1], [0.3, 0.5, 0.1, 0.1],
                       [0.2, 0.6, 0.1, 0.1], [0.5, 0.3, 0.1, 0.1], [0.4, 0.2, 0.3, 0.1]])
HAND_Y = np.array([0, 0, 0, 1, 1, 2])


def test_metrics_match_hand_computation_with_a_class_never_predicted_and_one_absent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0/0 precision or recall is 0 by definition, not a warning
        m = classification_metrics(HAND_PROBS, HAND_Y, HAND_LABELS, ece_bins=10)
        assert macro_f1(HAND_Y, HAND_PROBS.argmax(axis=1), 4) == pytest.approx(15 / 56)
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["macro_f1"] == pytest.approx((4 / 7 + 1 / 2 + 0 + 0) / 4)  # every class counts, also "d"
    assert m["weighted_f1"] == pytest.approx((3 * 4 / 7 + 2 * 1 / 2 + 1 * 0) / 6)  # by support
    assert m["per_class"]["a"] == pytest.approx({"precision": 2 / 4, "recall": 2 / 3, "f1": 4 / 7, "support": 3})
    assert m["per_class"]["b"] == pytest.approx({"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "support": 2})
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["ce_loss"] == pytest.approx(-np.mean(np.log([0.7, 0.6, 0.3, 0.6, 0.3, 0.3])))
    assert m["n_test"] == 6
    assert json.loads(json.dumps(m)) == m  # plain JSON types only


def test_per_class_has_every_label_even_if_absent_from_test_and_predictions():
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.1, 0.7], [0.6, 0.1, 0.3]])
    y = np.array([0, 2, 2])  # "neutral" never occurs nor is predicted
    m = classification_metrics(probs, y, LABELS, ece_bins=10)
    assert list(m["per_class"]) == LABELS
    assert m["per_class"]["neutral"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["per_class"]["positive"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["negative"]["precision"] == pytest.approx(0.5)
    assert math.isfinite(m["ce_loss"])


def test_predictions_csv_uses_label_names_and_quotes_ids():
    text = predictions_csv(["a,1", "b", "c", "d"], Y, PROBS, LABELS)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["id", "actual", "predicted", "confidence"]
    assert rows[0] == {"id": "a,1", "actual": "negative", "predicted": "negative", "confidence": "0.900000"}
    assert rows[1]["actual"] == "neutral" and rows[1]["predicted"] == "negative"


def test_load_split_names_the_row_with_an_unknown_label(tmp_path):
    path = tmp_path / "test.jsonl"
    write_jsonl(path, [{"id": "1", "text": "ok", "label": "positive"}, {"id": "2", "text": "x", "label": "meh"}])
    with pytest.raises(ValueError, match=r"row 2 has label 'meh'"):
        load_split(path, LABELS)


def test_params_reject_zero_bins():
    with pytest.raises(ParamsError, match=r"^evaluate\.ece_bins: 0 is out of range, allowed >= 2"):
        EvaluateParams(batch_size=8, ece_bins=0, bias_search=2.0)


TEXTS = ["great drug no side effects", "terrible headache and nausea", "it was fine i guess",
         "worked well for my pain", "made me dizzy and tired", "no change at all",
         "best medicine ever", "awful stopped after a week", "okay but pricey", "helped quickly"]


@pytest.fixture
def trained(tmp_path):
    """A models/train-like dir (tiny BERT + pipeline.json) and a data/prepare-like dir."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model_dir = build_tiny_bert(tmp_path / "models/train", TEXTS, num_labels=len(LABELS))
    # BERT's init (std 0.02) gives near-identical outputs for every text, which would hide
    # a row-order bug; larger weights make each text's probabilities distinct.
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    with torch.no_grad():
        for weight in (p for p in model.parameters() if p.dim() == 2):
            weight.mul_(20)
    model.save_pretrained(model_dir)
    write_json(model_dir / "pipeline.json", {"seed": 0, "labels": LABELS, "model": {"name": "tiny", "max_length": 16,
                                                                                 "truncation": "head"},
                                             "loss": {}, "train": {}, "kept": "best"})
    data_dir = tmp_path / "data/prepare"
    rows = [{"id": f"t{i}", "text": t, "label": LABELS[i % 3]} for i, t in enumerate(TEXTS)]
    for split in ("test", "val"):
        write_jsonl(data_dir / f"{split}.jsonl", rows)
    write_heldout(model_dir, rows)  # train's scores of the val rows
    write_json(data_dir / "labels.json", LABELS)
    return model_dir, data_dir


def test_predict_proba_keeps_input_order_despite_length_batching(trained):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir, _ = trained
    probs = Classifier.load(model_dir).predict_proba(TEXTS, batch_size=4)  # max_length 16: pipeline.json
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        one_by_one = [model(**tok(t, truncation=True, max_length=16, return_tensors="pt")).logits.softmax(-1)[0]
                      for t in TEXTS]
    np.testing.assert_allclose(probs, torch.stack(one_by_one).numpy(), atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    assert probs.std(axis=0).min() > 1e-2  # distinct rows, so a shuffled order would fail above


def test_run_writes_metrics_and_dvc_plot_files(trained, tmp_path):
    model_dir, data_dir = trained
    metrics_path, plots_dir = tmp_path / "metrics/evaluate.json", tmp_path / "plots/evaluate"
    result = run(EvaluateParams(batch_size=4, ece_bins=10, bias_search=2.0), model_dir, data_dir, metrics_path, plots_dir)
    saved = json.loads(metrics_path.read_text())
    assert saved == result
    assert set(saved) == {"accuracy", "macro_f1", "weighted_f1", "per_class", "ece", "ce_loss", "n_test",
                          "calibration", "bias_tuned"}
    # pipeline.json has no temperature: none applied, and too few rows per class for the cross-validated check
    assert saved["calibration"]["temperature"] == 1.0 and saved["calibration"]["ece_unscaled"] == saved["ece"]
    # val == test here, so the tuned rule scores on test what it found on val, never below argmax
    tuned = saved["bias_tuned"]
    assert tuned["macro_f1"] == pytest.approx(tuned["val_macro_f1"]) and tuned["macro_f1"] >= saved["macro_f1"]
    assert saved["n_test"] == len(TEXTS)
    rows = list(csv.DictReader((plots_dir / "predictions.csv").open()))
    assert len(rows) == len(TEXTS) and list(rows[0]) == ["id", "actual", "predicted", "confidence"]
    assert {r["actual"] for r in rows} <= set(LABELS) and {r["predicted"] for r in rows} <= set(LABELS)
    assert np.mean([r["actual"] == r["predicted"] for r in rows]) == pytest.approx(saved["accuracy"])
    calibration = json.loads((plots_dir / "calibration.json").read_text())
    assert sum(b["count"] for b in calibration) == len(TEXTS)
    assert (plots_dir / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.rglob("*.tmp"))


def test_run_scores_the_probabilities_scaled_by_trains_temperature(trained, tmp_path):
    """With a temperature in pipeline.json, test ECE and CE are those of the scaled probabilities, the
    unscaled ones are reported beside them, and argmax scores do not move."""
    model_dir, data_dir = trained
    params = EvaluateParams(batch_size=4, ece_bins=10, bias_search=0.0)
    plain = run(params, model_dir, data_dir, tmp_path / "plain.json", tmp_path / "p1")
    pipeline = json.loads((model_dir / "pipeline.json").read_text())
    write_json(model_dir / "pipeline.json", {**pipeline, "temperature": 3.0})
    scaled = run(params, model_dir, data_dir, tmp_path / "scaled.json", tmp_path / "p2")
    raw = Classifier.load(model_dir)
    probs = raw.predict_proba(TEXTS, batch_size=4)
    assert raw.temperature == 3.0
    y = np.array([i % 3 for i in range(len(TEXTS))])
    assert scaled["ece"] == pytest.approx(expected_calibration_error(probs, y, 10))
    assert scaled["calibration"] | {"heldout_cross_validated": None} == {
        "temperature": 3.0, "ece_unscaled": pytest.approx(plain["ece"]),
        "ce_loss_unscaled": pytest.approx(plain["ce_loss"]),
        "heldout_cross_validated": None}
    assert scaled["ce_loss"] != pytest.approx(plain["ce_loss"])
    assert (scaled["accuracy"], scaled["macro_f1"]) == (plain["accuracy"], plain["macro_f1"])


def test_run_fails_when_model_labels_differ_from_labels_json(trained, tmp_path):
    model_dir, data_dir = trained
    write_json(data_dir / "labels.json", ["a", "b", "c"])
    with pytest.raises(ValueError, match="re-run the train stage"):
        run(EvaluateParams(batch_size=4, ece_bins=10, bias_search=2.0), model_dir, data_dir, tmp_path / "m.json", tmp_path / "p")
    assert not (tmp_path / "m.json").exists()


def test_run_names_a_missing_input_and_the_stage_that_makes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pipeline.json is missing: run `dvc repro train`"):
        run(EvaluateParams(batch_size=4, ece_bins=10, bias_search=2.0), tmp_path / "models/train", tmp_path / "data",
            tmp_path / "m.json", tmp_path / "p")


def test_tune_bias_finds_the_shift_that_recovers_an_under_predicted_class():
    # Class 1 is always the runner-up at 0.3 vs 0.6 (log-ratio -0.69), and it is the truth
    # on half the rows: only a bias of at least +0.7 on class 1 predicts it.
    probs = np.array([[0.6, 0.3, 0.1]] * 2 + [[0.1, 0.3, 0.6]] * 2 + [[0.6, 0.35, 0.05]] * 4)
    y = np.array([0, 0, 2, 2, 1, 1, 1, 1])
    bias = tune_bias(probs, y, 3, half_width=2.0)
    assert bias[0] == 0 and bias[1] == pytest.approx(0.6, abs=0.11) and bias[1] > np.log(0.6 / 0.35)
    assert ((np.log(probs) + bias).argmax(axis=1) == y).all()


def test_tune_bias_keeps_plain_argmax_when_it_is_already_best_or_search_is_off():
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    y = np.array([0, 1, 2])
    assert not tune_bias(probs, y, 3, half_width=2.0).any()
    assert not tune_bias(probs, np.array([1, 1, 1]), 3, half_width=0.0).any()


def test_tune_bias_keeps_the_bias_nearest_zero_among_equally_good_ones():
    # Class 1 wins the first two rows by a hair (truth 0): every bias from -0.2 down to -2.0 fixes them
    # without losing the last two; the search keeps -0.2.
    probs = np.array([[0.4, 0.45, 0.15]] * 2 + [[0.1, 0.8, 0.1]] * 2)
    assert tune_bias(probs, np.array([0, 0, 1, 1]), 3, half_width=2.0) == pytest.approx([0.0, -0.2, 0.0])


def test_tune_bias_searches_up_to_half_width_and_no_further():
    # Class 1 takes row 0 (truth 1) only with a bias above log(0.6 / 0.4) = 0.405.
    probs, y = np.array([[0.6, 0.4], [0.9, 0.1]]), np.array([1, 0])
    assert tune_bias(probs, y, 2, half_width=0.5) == pytest.approx([0.0, 0.5])
    assert tune_bias(probs, y, 2, half_width=0.4) == pytest.approx([0.0, 0.0])


def test_tune_bias_repeats_passes_until_nothing_changes():
    # The first pass finds nothing for class 1 and +1 for class 2; only then does +1 on class 1 pay.
    probs = np.array([[0.45, 0.14, 0.41], [0.6, 0.17, 0.23], [0.19, 0.64, 0.17], [0.12, 0.45, 0.43]])
    assert tune_bias(probs, np.array([2, 2, 0, 1]), 3, half_width=1.0) == pytest.approx([0.0, 1.0, 1.0])


def test_a_bias_can_lift_a_class_whose_probability_is_zero():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no log(0)
        assert biased_argmax(np.array([[0.9, 0.1, 0.0]]), np.array([0.0, 0.0, 30.0])).tolist() == [2]


def test_bias_tuned_metrics_score_every_class_with_the_validation_bias():
    # Validation is right by argmax, so the bias stays 0 and the test scores are the hand example's.
    val_probs = np.eye(4) * 0.7 + 0.075
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tuned = bias_tuned_metrics(val_probs, np.arange(4), HAND_PROBS, HAND_Y, HAND_LABELS, half_width=1.0)
    bias, per_class = tuned.pop("bias"), tuned.pop("per_class_f1")
    assert bias == {"a": 0.0, "b": 0.0, "c": 0.0, "d": 0.0}
    assert per_class == pytest.approx({"a": 4 / 7, "b": 0.5, "c": 0.0, "d": 0.0})
    assert tuned == pytest.approx({"val_macro_f1_argmax": 1.0, "val_macro_f1": 1.0, "accuracy": 0.5,
                                   "macro_f1": 15 / 56, "val_macro_f1_cross_validated": None})  # 1 row a class
    assert bias_tuned_metrics(val_probs, np.arange(4), val_probs, np.arange(4), HAND_LABELS, 1.0)["accuracy"] == 1.0


def test_cross_validated_bias_recovers_a_shift_every_part_shares():
    # class 1 always gets 0.4: argmax never predicts it; a bias tuned on any 4 of 5 parts fixes the 5th
    y = np.array([0, 1] * 10)
    probs = np.array([[0.9, 0.1] if c == 0 else [0.6, 0.4] for c in y])
    assert macro_f1_with_bias(probs, y, np.zeros(2)) == pytest.approx(1 / 3)
    assert cross_validated_bias_macro_f1(probs, y, 2, half_width=2.0) == pytest.approx(1.0)


def test_cross_validated_bias_scores_each_row_with_biases_tuned_without_it():
    # noise: a bias tuned on all rows scores them higher than the same rule does on rows it never saw
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [40, 15, 10])
    probs = rng.dirichlet([1.0, 1.0, 1.0], size=len(y))
    in_sample = macro_f1_with_bias(probs, y, tune_bias(probs, y, 3, half_width=2.0))
    assert cross_validated_bias_macro_f1(probs, y, 3, half_width=2.0) < in_sample - 0.02


def test_cross_validated_bias_needs_k_rows_of_every_class():
    y = np.array([0] * 10 + [1] * 4)
    probs = np.tile([0.5, 0.5], (len(y), 1))
    assert cross_validated_bias_macro_f1(probs, y, 2, half_width=1.0) is None
    assert cross_validated_bias_macro_f1(probs, y, 2, half_width=1.0, k=4) is not None

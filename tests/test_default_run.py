"""bench/default_run.py: the committed default run's per-stage table, from metrics/*.json."""

import json

from bench import default_run
from tools import tables


def _metrics() -> dict:
    classes = {"neg": {"before": 10, "after": 15}, "pos": {"before": 30, "after": 30}}
    return {"prepare": {"totals": {"train": 40, "val": 7, "test": 12}, "dropped": {"cross_split_leaks": 2}},
            "tokenizer": {"tokens_added": 5, "mode": "extend", "vocab_size": 1234},
            "pretrain": {"enabled": False},
            "augment": {"generated": 6, "kept": 5, "classes": classes},
            "alpha": {"method": "inverse", "per_class": {"neg": {"alpha": 0.6667}, "pos": {"alpha": 0.3333}}},
            "train": {"epochs_run": 4, "stop_reason": "early_stopping", "kept": "swa",
                      "best": {"epoch": 1, "val_macro_f1": 0.41}, "swa": {"val_macro_f1": 0.52, "snapshots": 2}},
            "evaluate": {"n_test": 12, "accuracy": 0.75, "macro_f1": 0.5, "ece": 0.1,
                         "per_class": {"neutral": {"f1": 0.25}}}}


def test_rows_say_what_each_stage_produced_from_its_metrics():
    lines = dict(default_run.rows(_metrics(), {"train": {"max_epochs": 9}}))
    assert list(lines) == list(default_run.STAGES)
    assert lines["prepare"] == "40 train / 7 val / 12 test reviews; 2 train review(s) dropped as also in test"
    assert lines["augment"] == "6 back-translations, 5 kept; neg 10 -> 15"  # an unchanged class is not listed
    assert lines["alpha"] == "inverse: neg 0.667 / pos 0.333"
    assert lines["train"] == ("4 of at most 9 epochs (early stopping); lowest val loss at epoch 1; SWA over 2 epochs; "
                              "kept swa: val macro-F1 0.520 (epoch-1 checkpoint 0.410)")
    assert lines["evaluate"] == "12 test reviews: accuracy 0.750, macro-F1 0.500, neutral F1 0.250, ECE 0.100"


def test_the_augment_row_says_off_with_the_counts_train_gets():
    metrics = _metrics()
    metrics["augment"].update(generated=0, kept=0, classes={"neg": {"before": 10, "after": 10},
                                                             "pos": {"before": 30, "after": 30}})
    params = {"train": {"max_epochs": 9}, "augment": {"enabled": False}}
    assert dict(default_run.rows(metrics, params))["augment"] == "off (train unchanged: neg 10 / pos 30)"


def test_the_evaluate_row_says_what_the_temperature_changed():
    metrics = _metrics()
    metrics["evaluate"]["calibration"] = {"temperature": 0.8123, "ece_unscaled": 0.0984}
    assert dict(default_run.rows(metrics, {"train": {"max_epochs": 9}}))["evaluate"].endswith(
        "ECE 0.100 (temperature 0.81; 0.098 unscaled)")
    metrics["evaluate"]["calibration"] = {"temperature": 1.0, "ece_unscaled": 0.1}  # scaling off
    assert dict(default_run.rows(metrics, {"train": {"max_epochs": 9}}))["evaluate"].endswith("ECE 0.100")


def test_kept_best_checkpoint_reports_its_own_score():
    m = _metrics()
    m["train"]["kept"] = "best"
    assert "kept best: val macro-F1 0.410" in dict(default_run.rows(m, {"train": {"max_epochs": 9}}))["train"]


def test_no_swa_line_when_nothing_was_averaged():
    m = _metrics()
    m["train"].update(kept="best", swa=None)
    assert "SWA" not in dict(default_run.rows(m, {"train": {"max_epochs": 9}}))["train"]


def test_the_results_file_holds_the_committed_metrics():
    res = json.loads(default_run.RESULTS.read_text())
    metrics, params = default_run.committed("HEAD")
    assert res["metrics"] == metrics, "metrics/*.json changed since: run `python bench/default_run.py`"
    rendered = tables.rendered(default_run.RESULTS.with_suffix(".md"))
    assert rendered == default_run.table(default_run.rows(metrics, params))

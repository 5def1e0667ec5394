"""bench/choose.py: the paired comparison that decides defaults on validation."""

import json

import pytest

from bench.choose import fmt_paired, paired, save, table, with_overrides


def _results(values: dict[str, list[float]], sizes: tuple[int, int] | None = None) -> list[dict]:
    split = {"n_train": sizes[0], "n_val": sizes[1]} if sizes else {}
    return [{"candidate": name, "seed": 40 + i, "val_macro_f1": v, "val_ce_loss": 0.8, "val_accuracy": 0.7,
             "epochs_run": 5, **split} for name, vs in values.items() for i, v in enumerate(vs)]


def _line(text: str, name: str) -> str:
    return next(x for x in text.splitlines() if x.startswith(f"| {name} |"))


def test_paired_difference_is_per_split_with_its_standard_error():
    results = _results({"base": [0.40, 0.50, 0.60], "new": [0.43, 0.52, 0.59]})
    # differences +0.03, +0.02, -0.01: mean +0.013, std 0.0208, SE 0.012; positive on 2 of 3
    assert fmt_paired(paired(results, "new", "base")) == "+0.013 ± 0.012 (2/3)"
    assert paired(results, "base", "base") is None and fmt_paired(None) == "—"


def test_overlapping_splits_widen_the_error_by_nadeau_bengio():
    # 509 train and 90 validation reviews per split: SE 0.0120 * sqrt(1 + 3 * 90/509) = 0.0149
    results = _results({"base": [0.40, 0.50, 0.60], "new": [0.43, 0.52, 0.59]}, sizes=(509, 90))
    stat = paired(results, "new", "base")
    assert stat["se"] == pytest.approx(0.01202, abs=1e-5)
    assert stat["se_corrected"] == pytest.approx(0.01487, abs=1e-5)
    text = table(results)
    assert "± corrected SE" in text and "+0.013 ± 0.015 (2/3)" in _line(text, "new")


def test_table_says_when_the_error_is_uncorrected():
    text = table(_results({"base": [0.40, 0.50, 0.60], "new": [0.43, 0.52, 0.59]}))
    assert "plain SE" in text and "+0.013 ± 0.012 (2/3)" in _line(text, "new")


def test_runs_from_splits_of_different_sizes_are_refused():
    results = _results({"base": [0.40, 0.50], "new": [0.43, 0.52]}, sizes=(509, 90))
    results[-1]["n_train"] = 400
    with pytest.raises(ValueError, match="different sizes"):
        paired(results, "new", "base")


def test_paired_uses_only_the_splits_both_candidates_ran():
    results = _results({"base": [0.40, 0.50], "new": [0.50, 0.70, 0.90]})
    assert fmt_paired(paired(results, "new", "base")) == "+0.150 ± 0.050 (2/2)"


def test_paired_counts_a_repeated_candidate_and_seed_once():
    results = _results({"base": [0.40, 0.50], "new": [0.30, 0.52]}) + _results({"new": [0.45]})
    stat = paired(results, "new", "base")  # seed 40 twice for `new`: only the later 0.45 counts
    assert stat["n"] == 2 and stat["mean"] == pytest.approx(0.035)


def test_table_compares_with_the_first_candidate_unless_told():
    results = _results({"base": [0.40, 0.50, 0.60], "new": [0.43, 0.52, 0.59]})
    assert "paired vs base" in table(results) and "+0.013 ± 0.012 (2/3)" in table(results)
    assert "paired vs new" in table(results, "new") and "-0.013 ± 0.012 (1/3)" in table(results, "new")


def test_overrides_must_name_existing_keys():
    assert with_overrides({"loss": {"gamma": 2}}, {"loss.gamma": 0}) == {"loss": {"gamma": 0}}
    with pytest.raises(KeyError, match="loss.gama"):
        with_overrides({"loss": {"gamma": 2}}, {"loss.gama": 0})


def test_table_counts_a_repeated_candidate_and_seed_once_keeping_the_last():
    first = _results({"base": [0.40, 0.50], "new": [0.30, 0.52]})
    rerun = _results({"new": [0.45]})  # merged logs: `new` on seed 40 again, the later value wins
    line = _line(table(first + rerun), "new")
    assert line.split(" | ")[1] == "2"  # distinct seeds, not 3 runs
    assert "0.485 ± 0.049" in line  # mean of 0.45 and 0.52; 0.30 is gone
    assert "+0.035 ± 0.015 (2/2)" in line  # paired: +0.05 and +0.02 over the two splits, both positive


def test_save_writes_the_results_file_and_its_table(tmp_path):
    results = _results({"base": [0.40, 0.50, 0.60], "new": [0.43, 0.52, 0.59]}, sizes=(509, 90))
    results += _results({"new": [0.43]}, sizes=(509, 90))  # a rerun of (new, 40): counted once
    md = save(results, None, "python bench/choose.py table run.log --save", tmp_path / "choose.json")
    res = json.loads((tmp_path / "choose.json").read_text())
    assert res["command"] == "python bench/choose.py table run.log --save" and len(res["commit"]) == 40
    assert (res["n_train"], res["n_val"], res["seeds"], res["baseline"]) == (509, 90, [40, 41, 42], "base")
    new = res["candidates"][1]
    assert new["seeds"] == [40, 41, 42] and len(res["runs"]) == 6
    assert new["vs_baseline"]["se_corrected"] == pytest.approx(0.01487, abs=1e-5)
    assert new["val_macro_f1"]["values"] == pytest.approx([0.43, 0.52, 0.59])
    assert (tmp_path / "choose.md").read_text().endswith(md) and md == table(results)

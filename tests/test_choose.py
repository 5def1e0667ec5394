"""bench/choose.py: the paired comparison that decides defaults on validation."""

import pytest

from bench.choose import paired, table, with_overrides


def _results(values: dict[str, list[float]]) -> list[dict]:
    return [{"candidate": name, "seed": 40 + i, "val_macro_f1": v, "val_ce_loss": 0.8, "val_accuracy": 0.7,
             "epochs_run": 5} for name, vs in values.items() for i, v in enumerate(vs)]


def test_paired_difference_is_per_split_with_its_standard_error():
    results = _results({"base": [0.40, 0.50, 0.60], "new": [0.43, 0.52, 0.59]})
    # differences +0.03, +0.02, -0.01: mean +0.013, std 0.0208, SE 0.012; positive on 2 of 3
    assert paired(results, "new", "base") == "+0.013 ± 0.012 (2/3)"
    assert paired(results, "base", "base") == "—"


def test_paired_uses_only_the_splits_both_candidates_ran():
    results = _results({"base": [0.40, 0.50], "new": [0.50, 0.70, 0.90]})
    assert paired(results, "new", "base") == "+0.150 ± 0.050 (2/2)"


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
    line = next(x for x in table(first + rerun).splitlines() if x.startswith("| new |"))
    assert line.split(" | ")[1] == "2"  # distinct seeds, not 3 runs
    assert "0.485 ± 0.049" in line  # mean of 0.45 and 0.52; 0.30 is gone
    assert "+0.035 ± 0.015 (2/2)" in line  # paired: +0.05 and +0.02 over the two splits, both positive

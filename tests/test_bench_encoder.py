"""bench/encoder.py and bench/profile_tables.py: the profile tables, from result rows (no pipeline runs)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import encoder  # noqa: E402
from bench.profile_tables import table  # noqa: E402


def _row(profile, seed, f1, **extra):
    return {"profile": profile, "seed": seed, "heldout": "out-of-fold", "heldout_rows": 599, "val_macro_f1": f1,
            "test_macro_f1": f1 - 0.1, "test_bias_tuned_macro_f1": f1, "test_accuracy": 0.7, "test_neutral_f1": 0.1,
            "test_ece": 0.05, "epochs_run": [6, 7], "snapshots": [3, 4], "wall_s": 600.0, **extra}


def _cells(line):
    return [c.strip() for c in line.split("|")[1:-1]]


def _tables(rows):
    """The cross-fit output's two tables (held-out, then test), each as its lines."""
    select, caption, test = table(rows).split("\n\n")
    assert caption.startswith("On the test split")
    return select.splitlines(), test.splitlines()


def test_crossfit_table_counts_a_repeated_seed_once_and_lists_every_fit():
    rows = [_row("folds2", 42, 0.9), _row("folds2", 42, 0.5), _row("folds2", 43, 0.7)]  # seed 42 re-run: the last counts
    select, test = _tables(rows)
    assert len(select) == len(test) == 3 and select[0].startswith("| profile | seeds | held out (rows) |")
    assert _cells(select[2]) == ["folds2", "42,43", "out-of-fold (599)", "0.600 ± 0.141", "",
                                 "6/7 : 3/4; 6/7 : 3/4", "10.0"]
    assert test[0].startswith("| profile | seeds | test macro-F1 |") and "held-out" not in test[0]
    assert _cells(test[2])[:3] == ["folds2", "42,43", "0.500 ± 0.141"]


def test_a_profile_on_the_same_folds_is_paired_on_held_out_scores_with_the_k_fold_correction():
    def row(profile, seed, f1, ce):
        return _row(profile, seed, f1, val_ce_loss=ce, kept=["best"] * 3, n_train=509, n_val=90)

    rows = [row("folds3", s, f1, 0.6) for s, f1 in ((42, 0.58), (43, 0.55), (44, 0.60))]
    rows += [row("folds3-noswa", s, f1, ce) for s, f1, ce in ((42, 0.60, 0.55), (43, 0.56, 0.57), (44, 0.63, 0.59))]
    rows += [row("folds3-noswa", 45, 0.9, 0.1)]  # a seed folds3 never ran: not paired
    select, _ = _tables(rows)
    cells = _cells(select[3])
    # differences 0.02, 0.01, 0.03: std 0.01; 3 folds => n_test / n_train = 1/2, SE x sqrt(1 + 3/2)
    se = 0.01 / 3 ** 0.5 * (1 + 3 / 2) ** 0.5
    assert cells[4] == f"+0.020 ± {se:.3f} (3/3); -0.030"
    assert _cells(select[2])[4] == ""  # folds3: no pair


def test_rows_without_held_out_scores_keep_the_encoder_table():
    row = {"profile": "minilm", "seed": 42, "val_macro_f1": 0.5, "test_macro_f1": 0.4, "test_neutral_f1": 0.1,
           "test_ece": 0.06, "wall_s": 600.0, "peak_mib": 2048}
    assert table([row]).splitlines()[2] == "| minilm | 42 | 0.500 |  | 0.400 | 0.100 | 0.060 | 10.0 / 10.0 | 2.0 |"


def test_a_frozen_profile_is_paired_with_full_fine_tuning_of_its_encoder_with_the_corrected_se():
    def row(profile, seed, val):
        return {"profile": profile, "seed": seed, "val_macro_f1": val, "test_macro_f1": 0.5, "test_neutral_f1": 0.1,
                "test_ece": 0.06, "wall_s": 600.0, "peak_mib": 2048, "n_train": 509, "n_val": 90}

    rows = [row("mpnet-first-epoch", s, v) for s, v in ((42, 0.5), (43, 0.6), (44, 0.7))]
    del rows[0]["n_train"], rows[0]["n_val"]  # a row from before they were recorded: the others' sizes serve
    rows += [row("mpnet-freeze11-short", s, v) for s, v in ((42, 0.48), (43, 0.62), (44, 0.66))]
    rows += [row("minilm-freeze4", s, v) for s, v in ((42, 0.4), (43, 0.5))]  # no minilm rows: nothing to pair
    cells = [_cells(line)[3] for line in table(rows).splitlines()[2:]]
    # diffs -0.02, +0.02, -0.04: s = 0.03055, s / sqrt(3) = 0.01764, x sqrt(1 + 3 x 90 / 509) = 0.02182
    assert cells == ["", "-0.013 ± 0.022 (1/3)", ""]


def test_a_profile_is_paired_with_the_default_on_shared_seeds_only():
    rows = [_row("folds2", s, f) for s, f in ((42, 0.55), (43, 0.58), (45, 0.9))]  # 45: no default to pair with
    rows += [_row("default", s, f) for s, f in ((42, 0.5), (43, 0.6), (44, 0.7))]  # run later, shown first
    _, test = _tables(rows)
    assert _cells(test[2])[:4] == ["default", "42,43,44", "0.500 ± 0.100", ""]
    assert _cells(test[3])[3] == "+0.015 ± 0.035 (1/2)"


def test_the_encoder_table_borrows_the_minilm_default_from_the_crossfit_results(tmp_path):
    import json

    def row(profile, seed, val):
        return _row(profile, seed, val, peak_mib=2048, n_train=509, n_val=90, commit=f"{seed}" * 7)

    (tmp_path / "crossfit.json").write_text(json.dumps(
        [row("minilm", s, v) for s, v in ((42, 0.5), (43, 0.6), (44, 0.7))] + [row("minilm-folds3", 42, 0.9)]))
    frozen = [row(p, s, v) for p in ("minilm-freeze4", "minilm-grouped") for s, v in ((42, 0.48), (43, 0.62), (44, 0.66))]
    encoder.save(frozen, tmp_path / "encoder.json")
    assert json.loads((tmp_path / "encoder.json").read_text()) == frozen  # the borrowed rows stay in crossfit.json
    md = (tmp_path / "encoder.md").read_text().splitlines()
    assert "minilm: the minilm rows of crossfit.json" in md[0]
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in md[3:]]
    assert [c[:2] for c in cells] == [["minilm", "42,43,44"], ["minilm-freeze4", "42,43,44"],
                                      ["minilm-grouped", "42,43,44"]]  # folds3 not borrowed
    # every lever (freezing, grouping) pairs with its encoder's full fine-tuning; that one with nothing
    assert cells[0][2] == "0.600 ± 0.100" and [c[3] for c in cells] == ["", *["-0.013 ± 0.022 (1/3)"] * 2]
    # the cross-fit table borrows the defaults before (backtrans) from encoder.json (none there yet), and its
    # own row for a seed wins
    crossfit = json.loads((tmp_path / "crossfit.json").read_text())
    assert encoder.with_borrowed(crossfit, tmp_path / "crossfit.json") == crossfit
    encoder.save([*frozen, row("mpnet-freeze8-short", 42, 0.3), row("mpnet-freeze8-short", 43, 0.4)],
                 tmp_path / "encoder.json")
    own = row("backtrans", 43, 0.8)
    lines = encoder.results_table([*crossfit, own], tmp_path / "crossfit.json").splitlines()
    assert [line.split("|")[1:5] for line in lines[2:3]] == [[" backtrans ", " 42,43 ", " out-of-fold (599) ",
                                                              " 0.550 ± 0.354 "]]  # 0.3 borrowed, 0.8 its own


def test_a_results_file_of_other_data_pairs_with_its_own_default(tmp_path):
    rows = [_row("bbcnews", s, f, commit="a" * 7) for s, f in ((42, 0.9), (43, 0.8))]
    rows += [_row("bbcnews-first-epoch", s, f, commit="a" * 7) for s, f in ((42, 0.95), (43, 0.8))]
    rows += [_row("default", s, 0.1, commit="a" * 7) for s in (42, 43)]  # another dataset's default: not the baseline
    encoder.save(rows, tmp_path / "bbcnews.json")
    test = (tmp_path / "bbcnews.md").read_text().split("\n\n")[-1].splitlines()
    assert [_cells(line)[3] for line in test[2:]] == ["", "+0.025 ± 0.025 (1/2)", "-0.750 ± 0.050 (0/2)"]


def test_a_metric_the_data_has_no_class_for_shows_a_dash():
    rows = [_row("bbcnews", s, 0.9, test_neutral_f1=None) for s in (42, 43)]
    _, test = _tables(rows)
    cells = _cells(test[2])
    assert cells[6] == "—" and cells[2] == "0.800 ± 0.000"


def test_profiles_other_than_the_defaults_plus_one_change_pin_what_they_need():
    # a profile that measured the MiniLM defaults must stay MiniLM whatever params.yaml's defaults are
    for name, sets in encoder.PROFILES.items():
        if name.startswith(("minilm", "bbcnews-minilm")):
            assert "model.name=bundled-minilm" in sets and any(s.startswith("model.freeze_layers=") for s in sets), name
        if name.startswith("mpnet"):
            assert any(s.startswith("train.learning_rate=") for s in sets), name


def test_profiles_measured_while_back_translation_was_on_by_default_pin_it_on():
    """Their rows ran with augment.enabled true; a re-run under today's default (off) would not reproduce them."""
    for name, sets in encoder.PROFILES.items():
        if name not in ("default", "head", "temperature", "padded", "folds3-nobacktrans", "folds3-head-tail",
                        "folds3-no-tokenizer", "folds3-no-smoothing") and not name.startswith("bbcnews"):
            assert encoder.BT in sets, name
    assert "augment.enabled=false" in encoder.PROFILES["folds3-nobacktrans"]


def test_profiles_measured_before_sub_batches_pin_the_padded_batch():
    """Every row but the defaults' ran with each batch padded whole; sub-batches draw other dropout masks."""
    for name, sets in encoder.PROFILES.items():
        assert (encoder.PADDED in sets) == (name not in encoder.CURRENT), name
        assert len([s for s in sets if s.startswith("train.sub_batches=")]) == (name not in encoder.CURRENT), name
    assert {"default", "bbcnews"} <= set(encoder.CURRENT) and "padded" not in encoder.CURRENT


def test_profiles_measured_before_head_tail_became_the_default_pin_head():
    """Their rows kept each long text's beginning only; under today's default (head_tail) a re-run would not."""
    for name, sets in encoder.PROFILES.items():
        truncation = [s for s in sets if s.startswith("model.truncation=")]
        if name in encoder.HEAD_TAIL:
            assert truncation == [], name
        else:
            assert len(truncation) == 1, name
    assert encoder.HEAD in encoder.PROFILES["head"] and encoder.HEAD in encoder.PROFILES["minilm"]
    assert "model.truncation=head_tail" in encoder.PROFILES["folds3-head-tail"]
    assert encoder.HEAD not in encoder.PROFILES["folds3-head-tail"]


def test_the_out_of_fold_candidates_of_the_ablation_change_one_key_of_their_pair():
    from bench.profile_tables import HELDOUT_PAIR

    for name, change in (("folds3-no-tokenizer", "tokenizer.max_new_tokens=0"),
                         ("folds3-no-smoothing", "loss.label_smoothing=0")):
        assert HELDOUT_PAIR[name] == "folds3-head-tail"
        assert set(encoder.PROFILES[name]) - set(encoder.PROFILES["folds3-head-tail"]) == {change}
        assert set(encoder.PROFILES["folds3-head-tail"]) <= set(encoder.PROFILES[name])


def test_profiles_measured_before_temperature_scaling_pin_it_off():
    """Their rows hold unscaled test ECE; a re-run under today's default (on) would not reproduce them."""
    for name, sets in encoder.PROFILES.items():
        if name.startswith(("minilm", "bbcnews-minilm", "mpnet", "folds")) and name != "folds3-temperature":
            assert encoder.NO_T in sets, name
    assert "train.temperature_scaling=true" in encoder.PROFILES["folds3-temperature"]


def test_a_pinned_profile_gives_each_key_once_with_the_change_last_said():
    sets = encoder.PROFILES["minilm-freeze4"]
    keys = [s.split("=", 1)[0] for s in sets]
    assert len(keys) == len(set(keys)) and "model.freeze_layers=4" in sets and "model.freeze_layers=0" not in sets


def test_temperature_rows_pair_scaled_with_unscaled_on_the_same_held_out_rows():
    def row(seed, ce, ce_scaled, ece, ece_scaled):
        cal = {"ce_loss": ce, "ce_loss_scaled": ce_scaled, "ece": ece, "ece_scaled": ece_scaled}
        return _row("default", seed, 0.5, heldout="validation", heldout_rows=90, kept=["swa"], n_train=509, n_val=90,
                    temperature=0.8, heldout_calibration=cal, test_ece_unscaled=0.09, test_ce_loss=0.6,
                    test_ce_loss_unscaled=0.65)

    rows = [row(42, 0.70, 0.68, 0.10, 0.05), row(43, 0.70, 0.66, 0.10, 0.07), row(44, 0.70, 0.71, 0.10, 0.06)]
    rows.append(_row("folds3", 42, 0.6))  # no calibration recorded (runs before it): no line
    blocks = table(rows).split("\n\n")
    assert blocks[-2].startswith("Temperature scaling")
    lines = blocks[-1].splitlines()
    assert len(lines) == 3
    cells = _cells(lines[2])
    # CE differences -0.02, -0.04, +0.01: mean -0.017, std 0.0252; corrected SE x sqrt(1 + 3 * 90/509)
    se = 0.025166 / 3 ** 0.5 * (1 + 3 * 90 / 509) ** 0.5
    assert cells[:4] == ["default", "42,43,44", "validation (90)", "0.800 ± 0.000"]
    assert cells[5] == f"-0.017 ± {se:.3f} (2/3)"
    assert cells[7].startswith("-0.040 ± ") and cells[7].endswith("(3/3)")
    assert cells[8:] == ["0.090 ± 0.000 → 0.050 ± 0.000", "0.650 ± 0.000 → 0.600 ± 0.000"]

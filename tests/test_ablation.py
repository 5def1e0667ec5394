"""bench/ablation.py: the rows it queues and what its report reads."""

import pytest

from bench.ablation import earlier_rows, group_rows, kept_val_f1, results, table
from bench.ablation_rows import DEFAULT_ROW, DEFAULT_WITHOUT, REMEDIES, WITHOUT, rows
from stages.common import read_params
from tools.grid import Run


def _dotted(params: dict, key: str):
    for part in key.split("."):
        params = params[part]
    return params


def test_the_default_row_is_params_yaml_default():
    params = read_params()
    default = dict((name, overrides) for name, _, overrides in rows())[DEFAULT_ROW]
    assert {key: _dotted(params, key) for key in default} == default


def test_rows_are_cumulative_and_pin_every_key_a_later_row_changes():
    built = rows()
    keys = [set(overrides) for _, _, overrides in built]
    assert all(keys[0] == k for k in keys), "a key set only by a later row would float with params.yaml"
    plain, tapt10 = built[0][2], dict((name, o) for name, _, o in built)["tapt10"]
    assert plain["pretrain.enabled"] is False and tapt10["pretrain.enabled"] is True
    assert tapt10["pretrain.epochs"] == 10


def test_each_leave_one_out_row_is_the_default_with_only_its_remedy_undone():
    built = dict((name, overrides) for name, _, overrides in rows())
    final = built["final"]
    for name, _, change in WITHOUT:
        differs = {key for key in final if built[name][key] != final[key]}
        assert differs == set(change) and differs, name  # a no-op change would compare the default with itself
    assert {name for name, _, _ in WITHOUT} >= {"no-swa", "no-backtrans", "plain-mpnet"}
    assert {key: built["plain-mpnet"][key] for key in REMEDIES} == {key: built["plain-ce"][key] for key in REMEDIES}


def test_todays_leave_one_out_rows_undo_one_remedy_of_todays_default_and_pair_with_it():
    built = dict((name, overrides) for name, _, overrides in rows())
    default = built[DEFAULT_ROW]
    assert {k for k in default if default[k] != built["no-backtrans"][k]} == {"model.truncation", "train.sub_batches"}
    for name, _, change in DEFAULT_WITHOUT:
        assert {key for key in default if built[name][key] != default[key]} == set(change), name
    runs = [run("abl-default-s42", 0.64), run("abl-default-no-swa-s42", 0.60), run("abl-default-no-swa-s43", 0.5),
            run("abl-default-s43", 0.62), run("abl-no-backtrans-s42", 0.61), run("abl-no-backtrans-s43", 0.60)]
    res = {r["name"]: r for r in results(group_rows(runs), {}, {}, [], [])["rows"]}
    assert res["default-no-swa"]["vs_row"] == "default" and res["default"]["vs_row"] == "no-backtrans"
    assert abs(res["default-no-swa"]["vs_previous"]["mean"] - -0.08) < 1e-12


def test_runs_of_another_bench_count_for_a_row_only_with_the_rows_exact_params():
    default = dict((name, overrides) for name, _, overrides in rows())[DEFAULT_ROW]
    nested: dict = {}
    for key, value in default.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    same = Run("enc-head-tail-s43", nested, run("x", 0.6).metrics)
    assert [r.name for r in group_rows([same])[DEFAULT_ROW]] == ["enc-head-tail-s43"]
    nested["model"]["truncation"] = "head"
    with pytest.raises(SystemExit, match="model.truncation"):
        group_rows([same])


def test_a_leave_one_out_row_is_paired_with_the_default_not_with_the_row_above():
    runs = [run("abl-weights-s42", 0.30), run("abl-weights-s43", 0.30), run("abl-final-s42", 0.60),
            run("abl-final-s43", 0.62), run("abl-no-swa-s42", 0.55), run("abl-no-swa-s43", 0.61),
            run("abl-no-backtrans-s42", 0.50), run("abl-no-backtrans-s43", 0.50)]
    res = {r["name"]: r for r in results(group_rows(runs), {}, {}, [], [])["rows"]}
    assert res["final"]["vs_row"] == "weights" and res["no-swa"]["vs_row"] == "final"
    assert res["no-backtrans"]["vs_row"] == "final"  # not no-swa, the row above it
    assert abs(res["no-swa"]["vs_previous"]["mean"] - -0.03) < 1e-12 and res["no-swa"]["vs_previous"]["better"] == 0
    assert abs(res["no-backtrans"]["vs_previous"]["mean"] - -0.11) < 1e-12
    assert results(group_rows(runs[-2:]), {}, {}, [], [])["rows"][0]["vs_previous"] is None  # no default to pair


def test_report_reads_the_validation_score_of_the_kept_model():
    def exp(name, kept):
        train = {"kept": kept, "best": {"val_macro_f1": 0.4}, "swa": {"val_macro_f1": 0.5}}
        return {"name": name, "data": {"metrics": {"metrics/train.json": {"data": train}}}}

    shown = [{"rev": "abc", "experiments": [{"revs": [exp("abl-a-s1", "swa")]}, {"revs": [exp("abl-b-s1", "best")]},
                                             {"revs": [{"name": "queued", "data": {"metrics": {}}}]}]}]
    assert kept_val_f1(shown) == {"abl-a-s1": 0.5, "abl-b-s1": 0.4}


def run(name, f1):
    return Run(name, {}, {"macro_f1": f1, "accuracy": 0.7, "ece": 0.1, "per_class": {"neutral": {"f1": 0.3}}})


def test_a_repeated_row_and_seed_counts_once_keeping_the_last_run():
    # The same experiment under two baselines (merged `--rev`s), then rerun: seed 42 three times, 43 once.
    runs = [run("abl-final-s42", 0.50), run("abl-final-s43", 0.70), run("abl-final-s42", 0.55),
            run("abl-final-s42", 0.60), run("not-ablation", 0.1)]
    found = group_rows(runs)
    assert [m.metrics["macro_f1"] for m in found["final"]] == [0.60, 0.70] and set(found) == {"final"}
    lines = table(results(found, {}, {}, [], [])).splitlines()
    line = next(x for x in lines if x.startswith("| + mpnet, 8 of 12 layers frozen"))
    assert line.split(" | ")[1] == "2"  # distinct seeds, not 4 runs
    assert "0.650 ± 0.071" in line  # mean of 0.60 and 0.70 only


def test_results_file_pairs_each_row_with_the_row_above_on_shared_seeds_and_renders_its_table():
    runs = [run("abl-plain-ce-s42", 0.40), run("abl-plain-ce-s43", 0.50), run("abl-plain-ce-s44", 0.45),
            run("abl-weights-s42", 0.46), run("abl-weights-s43", 0.52), run("abl-final-s43", 0.60)]
    refs = [("TF-IDF + LR (balanced)", {"macro_f1": [0.5, 0.48], "accuracy": [0.7, 0.7], "neutral_f1": [0.1, 0.0],
                                        "ece": [0.1, 0.1]})]
    res = results(group_rows(runs), {"abl-weights-s42": 100.0}, {"abl-weights-s43": 0.51}, refs, [])
    plain, weights, final = res["rows"]
    assert [r["name"] for r in res["rows"]] == ["plain-ce", "weights", "final"] and res["seeds"] == [42, 43, 44]
    assert plain["vs_previous"] is None and final["vs_previous"] is None  # nothing above / one shared seed
    vs = weights["vs_previous"]  # seeds 42 and 43: +0.06 and +0.02
    assert vs["n"] == 2 and vs["better"] == 2 and abs(vs["mean"] - 0.04) < 1e-12 and abs(vs["se"] - 0.02) < 1e-12
    assert weights["test"]["macro_f1"]["values"] == [0.46, 0.52] and weights["train_wall_s"]["values"] == [100.0]
    assert weights["val_macro_f1"] == {"mean": 0.51, "std": 0.0, "values": [0.51]}
    assert len(res["commit"]) == 40 and res["references"][0]["test"]["macro_f1"]["values"] == [0.5, 0.48]
    lines = table(res).splitlines()
    assert lines[2].startswith("| TF-IDF + LR (balanced) (reference) | 2 | — | 0.490 ± 0.014 |")
    assert "| +0.040 ± 0.020 (better on 2/2) | 100 |" in lines[4]


def test_kept_rows_carry_over_pair_with_new_rows_and_are_replaced_by_a_rerun(tmp_path):
    # an earlier report (baseline commit "a" * 40): the default and no-swa on seeds 42, 43
    earlier = results(group_rows([run("abl-final-s42", 0.60), run("abl-final-s43", 0.62),
                                  run("abl-no-swa-s42", 0.55), run("abl-no-swa-s43", 0.61)]), {}, {}, [], [])
    earlier["baselines"] = ["a" * 40]
    for row in earlier["rows"]:
        del row["baselines"]  # files from before rows recorded their own baselines
    path = tmp_path / "ablation.json"
    path.write_text(__import__("json").dumps(earlier))
    kept = earlier_rows(path)
    assert [r["baselines"] for r in kept] == [["a" * 40]] * 2
    # new experiments (this commit): no-weights, paired with the kept default; and no-swa re-run
    res = results(group_rows([run("abl-no-weights-s42", 0.50), run("abl-no-weights-s43", 0.66),
                              run("abl-no-swa-s42", 0.40), run("abl-no-swa-s43", 0.40)]), {}, {}, [], [], kept)
    by = {r["name"]: r for r in res["rows"]}
    assert list(by) == ["final", "no-swa", "no-weights"]
    assert by["final"] == kept[0]  # carried over as recorded
    relabelled = results({}, {}, {}, [], [], [{**kept[0], "label": "old label"}])["rows"][0]
    assert relabelled == kept[0]  # under the row's label today
    assert by["no-swa"]["test"]["macro_f1"]["values"] == [0.40, 0.40]  # the re-run, not the kept row
    vs = by["no-weights"]["vs_previous"]  # -0.10 and +0.04 against the kept default's seeds
    assert by["no-weights"]["vs_row"] == "final" and abs(vs["mean"] - -0.03) < 1e-12 and vs["better"] == 1
    assert res["baselines"][0] == "a" * 40 and len(res["baselines"]) == 2 and res["command"].endswith("--keep")
    assert earlier_rows(tmp_path / "missing.json") == []


def test_recorded_runs_rebuild_the_params_each_record_ran_with_and_count_for_their_row(tmp_path):
    import json

    from bench.ablation import recorded_runs
    from bench.record import git

    def record(name, overrides, f1):
        return {"command": f"dvc exp run --force -n {name} " + " ".join(f"-S {o}" for o in overrides),
                "commit": git("rev-parse", "HEAD"), "overrides": overrides, "test_macro_f1": f1,
                "test_accuracy": 0.8, "test_ece": 0.08, "test_neutral_f1": 0.28, "val_macro_f1": 0.6,
                "train_wall_s": 480.0}

    path = tmp_path / "crossfit.json"
    path.write_text(json.dumps([record("enc-head-tail-s43", ["seed=43", "train.swa.enabled=false"], 0.62),
                                record("enc-folds3-s43", ["seed=43"], 0.5)]))
    runs, vals, times = recorded_runs(path)
    assert [r.name for r in runs] == ["enc-head-tail-s43"]  # not a SAME_RUNS experiment: skipped
    assert runs[0].params["seed"] == 43 and runs[0].params["train"]["swa"]["enabled"] is False
    assert runs[0].metrics["per_class"]["neutral"]["f1"] == 0.28
    assert vals == {"enc-head-tail-s43": 0.6} and times == {"enc-head-tail-s43": 480.0}
    with pytest.raises(SystemExit, match="train.swa.enabled"):  # an override the row does not have
        group_rows(runs)
    path.write_text(json.dumps([record("enc-head-tail-s43", ["seed=43"], 0.62)]))
    assert [r.metrics["macro_f1"] for r in group_rows(recorded_runs(path)[0])[DEFAULT_ROW]] == [0.62]


def test_the_pr_report_reads_the_seed_spread_of_the_row_that_is_params_yaml_default():
    from tools.report import ABLATION_ROW

    assert ABLATION_ROW == DEFAULT_ROW

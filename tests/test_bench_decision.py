"""bench/decision.py: held-out files found through an experiment's dvc.lock in the DVC cache, and its table."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import decision  # noqa: E402

COMMIT = "ab" + "c" * 38


def put(cache: Path, md5: str, text: str) -> None:
    (cache / md5[:2]).mkdir(parents=True, exist_ok=True)
    (cache / md5[:2] / md5[2:]).write_text(text)


def experiment_repo(root: Path, heldout: dict) -> Path:
    """A git repo with one experiment ref (what `dvc exp run -n enc-p-s42` leaves) and its models/train
    directory in the DVC cache."""
    cache = root / ".dvc/cache/files/md5"
    put(cache, "11" + "1" * 30, json.dumps(heldout))
    put(cache, "22" + "2" * 30, json.dumps({"labels": ["a", "b"]}))
    put(cache, "33" + "3" * 30 + ".dir", json.dumps([{"relpath": "heldout.json", "md5": "11" + "1" * 30},
                                                      {"relpath": "pipeline.json", "md5": "22" + "2" * 30}]))
    lock = {"stages": {"train": {"outs": [{"path": "metrics/train.json", "md5": "9" * 32},
                                          {"path": "models/train", "md5": "33" + "3" * 30 + ".dir"}]}}}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    for cmd in (["init", "-q"], ["add", "dvc.lock"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        subprocess.run(["git", *cmd], cwd=root, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True, text=True).stdout
    subprocess.run(["git", "update-ref", f"refs/exps/{COMMIT[:2]}/{COMMIT[2:]}/enc-p-s42", head.strip()], cwd=root,
                   check=True)
    return root


def test_cached_model_files_follow_the_experiments_lock_into_the_cache(tmp_path):
    heldout = {"what": "out-of-fold", "labels": ["a", "b"], "probs": [[0.9, 0.1], [0.2, 0.8]]}
    repo = experiment_repo(tmp_path, heldout)
    row = {"commit": COMMIT, "profile": "renamed", "seed": 42, "command": "dvc exp run --force -n enc-p-s42 -S seed=42"}
    assert decision.cached_model_files(repo, row, "heldout.json", "pipeline.json") == [heldout, {"labels": ["a", "b"]}]
    assert decision.cached_model_files(repo, row, "pipeline.json") == [{"labels": ["a", "b"]}]
    assert decision.cached_model_files(repo, {**row, "command": "dvc exp run -n enc-p-s43"}, "heldout.json") is None
    (repo / ".dvc/cache/files/md5/33").joinpath("3" * 30 + ".dir").unlink()  # gc'ed from the cache
    assert decision.cached_model_files(repo, row, "heldout.json") is None


def test_score_sets_the_cross_validated_bias_rule_beside_argmax_on_the_same_rows():
    labels = ["a", "b"]
    y = ["a", "b"] * 10
    probs = [[0.9, 0.1] if lab == "a" else [0.6, 0.4] for lab in y]  # b is never argmax; a shift recovers it
    got = decision.score({"what": "validation", "labels": y, "probs": probs}, labels)
    assert got == {"heldout": "validation", "rows": 20, "argmax_macro_f1": pytest.approx(1 / 3),
                   "bias_cv_macro_f1": pytest.approx(1.0)}


def test_table_pairs_per_seed_with_the_corrected_se_of_its_split():
    def row(seed, argmax, bias, folds=1):
        return {"profile": f"k{folds}", "seed": seed, "folds": folds, "n_train": 509, "n_val": 90,
                "heldout": "validation", "rows": 90, "argmax_macro_f1": argmax, "bias_cv_macro_f1": bias}
    rows = [row(42, 0.5, 0.55), row(43, 0.5, 0.52), row(44, 0.5, 0.48), row(42, 0.5, 0.6, 3), row(43, 0.5, 0.5, 3)]
    lines = decision.table(rows).splitlines()
    d = np.array([0.05, 0.02, -0.02])
    se = d.std(ddof=1) / np.sqrt(3) * np.sqrt(1 + 3 * 90 / 509)
    assert lines[2].endswith(f"| +0.017 ± {se:.3f} (2/3) |")
    d3 = np.array([0.1, 0.0])
    assert lines[3].endswith(f"| +0.050 ± {d3.std(ddof=1) / np.sqrt(2) * np.sqrt(1 + 2 * 1 / 2):.3f} (1/2) |")


def test_fold_rows_without_recorded_split_sizes_still_get_the_k_fold_correction():
    rows = [{"profile": "k3", "seed": s, "folds": 3, "n_train": None, "n_val": None, "heldout": "out-of-fold",
             "rows": 599, "argmax_macro_f1": 0.5, "bias_cv_macro_f1": b} for s, b in ((42, 0.6), (43, 0.5))]
    d3 = np.array([0.1, 0.0])
    line = decision.table(rows).splitlines()[2]
    assert line.endswith(f"| +0.050 ± {d3.std(ddof=1) / np.sqrt(2) * np.sqrt(1 + 2 * 1 / 2):.3f} (1/2) |")


def test_kept_rows_take_the_profile_name_the_results_files_use_today():
    def ran(profile, seed, commit, name):
        return {"profile": profile, "seed": seed, "commit": commit, "command": f"dvc exp run --force -n {name}"}

    results = [ran("backtrans", 42, "c1", "enc-default-s42"), ran("a", 42, "c2", "enc-a-s42"),
               ran("b", 42, "c2", "enc-b-s42"), ran("default", 43, "c3", "enc-head-tail-s43")]
    assert decision.profile_now({"profile": "default", "seed": 42, "commit": "c1"}, results) == "backtrans"  # renamed
    assert decision.profile_now({"profile": "b", "seed": 42, "commit": "c2"}, results) == "b"  # still its name
    assert decision.profile_now({"profile": "gone", "seed": 42, "commit": "c2"}, results) == "gone"  # ambiguous
    row = {"profile": "head-tail", "seed": 43, "commit": "c3", "experiment": "enc-head-tail-s43"}
    assert decision.profile_now(row, results) == "default"  # found by its experiment

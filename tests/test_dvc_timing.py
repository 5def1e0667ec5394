"""Tests for bench/dvc_timing.py on the toy git + DVC repo (never on the real pipeline)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import dvc_timing  # noqa: E402
from bench import record  # noqa: E402
from toy_dvc import init_repo  # noqa: E402


def test_times_noop_repro_and_experiment_and_says_which_stages_ran(tmp_path):
    root = init_repo(tmp_path / "repo")
    rows = dvc_timing.time_repo(root, noop_repeats=2, set_param="loss.gamma=1", temp=False)
    (noop, noop_s, noop_stages), (exp, exp_s, exp_stages) = rows
    assert (noop, len(noop_s), noop_stages) == ("dvc repro", 2, "ran none (no-op)")
    assert exp == "dvc exp run -S loss.gamma=1" and len(exp_s) == 1
    assert exp_stages == "ran evaluate; restored none"
    assert yaml.safe_load((root / "params.yaml").read_text())["loss"]["gamma"] == 1  # ran in the workspace
    table = dvc_timing.table(rows)
    assert table.count("\n") == 3 and "`dvc exp run -S loss.gamma=1`" in table
    json_path, md_path = record.write("dvc_timing", record.start(), dvc_timing.results(rows, root, "3.x"), table,
                                      results=tmp_path / "results")
    saved = json.loads(json_path.read_text())
    assert {"date", "commit", "command", "device", "load_before", "load_after", "repo_commit"} <= set(saved)
    assert [(r["command"], len(r["seconds"])) for r in saved["runs"]] == [("dvc repro", 2), (exp, 1)]
    assert md_path.read_text().endswith(table + "\n")


def test_refuses_a_repo_with_stages_to_reproduce(tmp_path):
    root = init_repo(tmp_path / "repo")
    params = {"seed": 0, "loss": {"gamma": 3.0}, "alpha": {"method": "inverse"}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))  # gamma 3: evaluate is out of date
    with pytest.raises(SystemExit, match=r"not up to date \(evaluate\).*run `dvc repro` there first"):
        dvc_timing.time_repo(root, noop_repeats=1, set_param="loss.gamma=1", temp=False)

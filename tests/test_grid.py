"""tools.grid: experiments from `dvc exp show --json` -> table and figure of a metric per two params."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from toy_dvc import dvc, init_repo, sh

from tools import grid


def entry(name: str, gamma, method: str, seed: int, f1: float, error=None, lr=5e-5) -> dict:
    params = {"loss": {"gamma": gamma}, "alpha": {"method": method}, "seed": seed, "train": {"learning_rate": lr}}
    metrics = {"macro_f1": f1, "accuracy": 0.7, "weighted_f1": 0.6, "ece": 0.1}
    return {"rev": f"{name}-sha", "name": name, "error": error,
            "data": {"params": {"params.yaml": {"data": params}},
                     "metrics": {"metrics/evaluate.json": {"data": metrics}}}}


EXP_SHOW = [
    {**entry("workspace", 2.0, "inverse", 0, 0.99), "rev": "workspace", "name": None},  # skipped
    {**entry("main", 2.0, "inverse", 0, 0.55), "experiments": [
        {"revs": [entry("same-as-main", 2, "inverse", 0, 0.55)]},  # -S stores 2, params.yaml 2.0: one run
        {"revs": [entry("seed1", 2, "inverse", 1, 0.57)]},
        {"revs": [entry("none", 2, "none", 0, 0.40)]},
        {"revs": [entry("g0", 0, "none", 0, 0.30)]},
        {"revs": [entry("failed", 1, "none", 0, 0.0, error={"msg": "boom"})]},
        {"revs": [entry("other-lr", 2, "none", 0, 0.9, lr=1e-3)]},  # changes a third param
        {"revs": [entry("running", 1, "none", 0, 0.55)], "executor": {"state": "running"}},
    ]},
]


def test_runs_skip_workspace_failures_and_unfinished_and_keep_identical_params_once():
    runs = grid.runs_from_exp_show(EXP_SHOW)
    assert [r.name for r in runs] == ["main", "seed1", "none", "g0", "other-lr"]


def test_only_runs_that_change_nothing_but_the_axes_and_the_repeat_key_count():
    kept, left_out = grid.same_setting(grid.runs_from_exp_show(EXP_SHOW), {"loss.gamma", "alpha.method", "seed"})
    assert [r.name for r in kept] == ["main", "seed1", "none", "g0"] and [r.name for r in left_out] == ["other-lr"]


def test_cells_group_repeats_and_markdown_shows_mean_std_and_gaps():
    kept, _ = grid.same_setting(grid.runs_from_exp_show(EXP_SHOW), {"loss.gamma", "alpha.method", "seed"})
    cells = grid.cells(kept, "loss.gamma", "alpha.method")
    assert list(cells) == [(0.0, "none"), (2.0, "inverse"), (2.0, "none")]
    text = grid.markdown(cells, "loss.gamma", "alpha.method", "macro_f1")
    assert "| loss.gamma \\ alpha.method | inverse | none |" in text
    assert "| 0.0 | — | 0.300 |" in text  # gamma 0 x inverse was not run
    assert "| 2.0 | 0.560 ± 0.014 (n=2) | 0.400 |" in text
    assert "| 2.0 | inverse | 2 | 0.560 ± 0.014 | 0.700 ± 0.000 | 0.600 ± 0.000 | 0.100 ± 0.000 | main, seed1 |" in text


@pytest.mark.slow
def test_queued_grid_runs_and_renders_table_and_figure(tmp_path, monkeypatch):
    root = init_repo(tmp_path / "repo")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # the worker runs `dvc`
    dvc(root, "exp", "run", "--queue", "-S", "loss.gamma=1,2", "-S", "alpha.method=none,inverse")
    dvc(root, "queue", "start", "-j", "1")
    deadline = time.monotonic() + 240
    while any(s in dvc(root, "queue", "status") for s in ("Queued", "Running")):
        assert time.monotonic() < deadline, dvc(root, "queue", "status")
        time.sleep(1)
    dvc(root, "queue", "stop")
    assert dvc(root, "queue", "status").count("Success") == 4
    text = grid.run("loss.gamma", "alpha.method", "macro_f1", root)
    assert "| 1.0 | 0.450 | 0.400 |" in text  # columns inverse, none: inverse is +0.05 in the toy
    assert "| 2.0 | 0.550 | 0.500 |" in text
    png = (root / "plots/grid/macro_f1.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert (root / "plots/grid/macro_f1.md").read_text() == text
    assert sh(root, "git", "status", "--porcelain", "--", "params.yaml", "metrics") == ""  # queue runs in copies

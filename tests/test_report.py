"""tools.report (and tools.base_rev): real `git` + `dvc params/metrics diff` on a throwaway repo (tests/toy_dvc.py).

The toy pipeline's metrics are a known function of its params, so a params change on a
branch moves test macro-F1 (0.55 -> 0.45) and per-class F1 by known amounts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from toy_dvc import commit, init_repo, set_params, sh

from tools import report
from tools.base_rev import has_commit


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """main: gamma 2 (macro-F1 0.55); a second commit on main that changes nothing measured."""
    root = init_repo(tmp_path_factory.mktemp("report") / "repo")
    (root / "README.md").write_text("docs only\n")
    commit(root, "docs")
    return root


@pytest.fixture()
def branch(repo):
    """Branch `gamma1` off main with gamma 1 (macro-F1 0.45), committed; back on main afterwards."""
    sh(repo, "git", "checkout", "-q", "-B", "gamma1", "main")
    set_params(repo, loss={"gamma": 1.0})
    commit(repo, "gamma 1")
    yield repo
    sh(repo, "git", "checkout", "-q", "main")


def test_branch_report_shows_params_and_metric_deltas_against_merge_base(branch):
    text, passed = report.report(None, None, None, root=branch)
    merge_base = sh(branch, "git", "rev-parse", "--short", "main").strip()
    assert f"workspace vs `{merge_base}` (merge-base with main)" in text
    assert "| `loss.gamma` | 2.0000 | 1.0000 |" in text
    assert "| macro_f1 | 0.5500 | 0.4500 | -0.1000 🔻 |" in text
    assert "| neutral | 0.2750 | 0.2250 | -0.0500 🔻 |" in text
    assert "| positive | 0.8000 | 0.8000 | 0 |" in text
    assert "| accuracy | 0.7000 | 0.7000 | 0 |" in text  # unchanged headline metrics stay in the table
    assert "No metric changes" not in text and passed


def test_no_change_on_main_says_so_against_previous_commit(repo):
    text, passed = report.report(None, None, None, root=repo)
    assert "(HEAD~1, the previous commit on main)" in text
    assert "No params changes." in text and "No metric changes." in text and passed


def test_dirty_workspace_on_main_is_compared_with_head_not_the_previous_commit(tmp_path):
    """After `dvc exp run` applies gamma 3 on top of a committed gamma 1, the report shows 1 -> 3, not 2 -> 3."""
    root = init_repo(tmp_path / "repo")  # gamma 2, macro-F1 0.55
    set_params(root, loss={"gamma": 1.0})  # macro-F1 0.45
    commit(root, "gamma 1")
    set_params(root, loss={"gamma": 3.0})  # macro-F1 0.65, uncommitted
    text, _ = report.report(None, None, None, root=root)
    head = sh(root, "git", "rev-parse", "--short", "HEAD").strip()
    assert f"workspace vs `{head}` (HEAD, the last commit on main; the workspace has uncommitted changes)" in text
    assert "| `loss.gamma` | 1.0000 | 3.0000 |" in text
    assert "| macro_f1 | 0.4500 | 0.6500 | +0.2000 🟢 |" in text
    # A named revision is not the workspace: its default base stays the previous commit.
    assert "(HEAD~1, the previous commit on main)" in report.report(None, "main", None, root=root)[0]
    commit(root, "gamma 3")  # clean again: the last commit's own change is what there is to compare
    text, _ = report.report(None, None, None, root=root)
    assert "(HEAD~1, the previous commit on main)" in text and "| `loss.gamma` | 1.0000 | 3.0000 |" in text


def test_gate_fails_on_a_drop_larger_than_allowed_and_passes_otherwise(branch, capsys):
    assert report.report(None, None, 0.02, root=branch)[1] is False
    assert report.report(None, None, 0.2, root=branch)[1] is True
    out = branch / "report.md"
    assert report.main(["--base", "main", "--fail-on-drop", "0.02", "--output", str(out)], root=branch) == 1
    assert "**Gate failed**: test macro-F1 dropped by 0.1000, more than the allowed 0.02." in capsys.readouterr().out
    assert out.read_text().startswith("## Pipeline report: workspace vs")


def test_explicit_base_and_revision(branch):
    text, _ = report.report("main", "gamma1", None, root=branch)
    assert "`gamma1` vs" in text and "(main, given)" in text and "-0.1000" in text


def test_shallow_clone_fetches_the_base_from_origin(branch, tmp_path):
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", "--depth", "1", "--branch", "gamma1", branch.as_uri(), str(clone))
    assert not has_commit("origin/main", clone)  # a single-branch shallow clone
    text, _ = report.report(None, None, None, root=clone)
    assert "(merge-base with origin/main)" in text and "| macro_f1 | 0.5500 | 0.4500 | -0.1000 🔻 |" in text


def test_shallow_clone_without_origin_says_it_cannot_compare(branch, tmp_path):
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", "--depth", "1", "--branch", "gamma1", branch.as_uri(), str(clone))
    sh(clone, "git", "remote", "remove", "origin")
    text, passed = report.report(None, None, 0.02, root=clone)
    assert "**No comparison**: cannot compare: no merge-base with main" in text
    assert "fetch-depth: 0" in text and not passed
    assert report.report(None, None, None, root=clone)[1]  # without a gate it is a note, not a failure


def test_delta_column_marks_direction_only_for_quality_metrics():
    Change = report.Change
    assert report.fmt_delta(Change("m", "per_class.neutral.f1", 0.1, 0.3)) == "+0.2000 🟢"
    assert report.fmt_delta(Change("m", "ece", 0.1, 0.3)) == "+0.2000 🔻"
    assert report.fmt_delta(Change("m", "swa.snapshots", 3, 2)) == "-1"  # a count: no verdict
    assert report.fmt_delta(Change("m", "best.val_ce_loss", None, 0.9)) == "new"
    assert report.fmt_delta(Change("m", "device", "cpu", None)) == "removed"
    assert report.fmt_delta(Change("m", "kept", "swa", "best")) == "changed"


def _ablation(root: Path, final_seeds=(42, 43, 44), macro_std=0.026, neutral_std=0.001) -> None:
    """bench/results/ablation.json as bench/ablation.py writes it, with a `default` row of known spread
    (and the 12-04 default's row `final`, whose spread the report must not read)."""
    def stat(std: float, n: int) -> dict:
        return {"mean": 0.5, "std": std, "values": [0.5] * n}

    n = len(final_seeds)
    rows = [{"name": "plain-ce", "seeds": [42, 43, 44], "test": {"macro_f1": stat(0.5, 3)}},
            {"name": "final", "seeds": [42, 43, 44], "test": {"macro_f1": stat(0.9, 3)}},
            {"name": "default", "label": "default", "seeds": list(final_seeds),
             "test": {"macro_f1": stat(macro_std, n), "accuracy": stat(0.02, n), "neutral_f1": stat(neutral_std, n),
                      "ece": stat(0.01, n)}, "val_macro_f1": stat(0.03, n)}]
    path = root / report.ABLATION
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"date": "2026-01-01", "commit": "abcdef1234", "seeds": [42, 43, 44], "rows": rows}))


def test_without_the_ablation_file_the_spread_column_says_so(branch):
    text, _ = report.report(None, None, None, root=branch)
    assert "| macro_f1 | 0.5500 | 0.4500 | -0.1000 🔻 | no spread measured |" in text
    assert "| neutral | 0.2750 | 0.2250 | -0.0500 🔻 | no spread measured |" in text
    assert "_Seed spread: no spread measured" in text


def test_deltas_are_placed_against_the_seed_spread_of_the_default(tmp_path):
    root = init_repo(tmp_path / "repo")  # gamma 2: macro-F1 0.55, neutral F1 0.275
    _ablation(root)  # untracked: it does not count as a workspace change
    set_params(root, loss={"gamma": 1.9})  # macro-F1 0.54 (0.38 σ), neutral 0.27 (5 σ of 0.001)
    text, passed = report.report(None, None, 0.005, root=root)
    assert "| macro_f1 | 0.5500 | 0.5400 | -0.0100 🔻 | 0.4 σ (σ 0.0260): within seed noise |" in text
    assert "| neutral | 0.2750 | 0.2700 | -0.0050 🔻 | 5.0 σ (σ 0.0010): beyond seed noise |" in text
    assert "| accuracy | 0.7000 | 0.7000 | 0 | 0.0 σ (σ 0.0200): within seed noise |" in text
    assert "| weighted_f1 | 0.6800 | 0.6800 | 0 | no spread measured |" in text  # the ablation has no weighted F1
    assert "over seeds 42, 43, 44 (`bench/results/ablation.json`, commit abcdef1)" in text
    # the gate still fails on a drop past its threshold, and says seeds alone move macro-F1 that much
    assert not passed and "dropped by 0.0100" in text and "Seeds alone move it this much (σ 0.0260" in text
    set_params(root, loss={"gamma": 1.0})  # macro-F1 0.45: 0.1 = 3.8 σ
    text, passed = report.report(None, None, 0.02, root=root)
    assert "| -0.1000 🔻 | 3.8 σ (σ 0.0260): beyond seed noise |" in text
    assert not passed and "dropped by 0.1000" in text and "Seeds alone" not in text


def test_within_seed_noise_means_at_most_two_root_two_sigma():
    Change = report.Change
    assert report.spread_cell(Change("m", "macro_f1", 0.5, 0.528), 0.01).endswith("2.8 σ (σ 0.0100): within seed noise")
    assert report.spread_cell(Change("m", "macro_f1", 0.5, 0.471), 0.01).endswith("2.9 σ (σ 0.0100): beyond seed noise")
    assert report.spread_cell(Change("m", "macro_f1", None, 0.5), 0.01) == "—"
    assert report.spread_cell(Change("m", "macro_f1", 0.5, 0.6), None) == "no spread measured"


def test_seed_spread_needs_a_default_row_over_two_seeds(tmp_path):
    assert report.seed_spread(tmp_path) is None  # no file
    _ablation(tmp_path, final_seeds=(42,))
    assert report.seed_spread(tmp_path) is None  # one seed measures no spread
    _ablation(tmp_path, final_seeds=(44, 42, 43, 42))
    spread = report.seed_spread(tmp_path)
    assert spread["seeds"] == [42, 43, 44] and spread["commit"] == "abcdef1"
    assert spread["std"] == {"macro_f1": 0.026, "accuracy": 0.02, "per_class.neutral.f1": 0.001, "ece": 0.01}
    _ablation(tmp_path, neutral_std=0.0)  # the same neutral F1 on every seed gives no yardstick to divide by
    assert "per_class.neutral.f1" not in report.seed_spread(tmp_path)["std"]
    path = tmp_path / report.ABLATION
    path.write_text(path.read_text().replace('"default"', '"tapt"'))
    assert report.seed_spread(tmp_path) is None  # the default's row is the one that counts

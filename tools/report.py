"""Compare this pipeline's results with a base revision, as one markdown document.

`dvc params diff` and `dvc metrics diff` of the workspace (or `--rev`) against a base
revision become readable tables: the test metrics with deltas, per-class test F1 with
deltas, every other changed metric, every changed param, and the plots to look at. The
base defaults to the merge-base with `main`; on `main` itself it is `HEAD~1` when the
workspace is clean and `HEAD` when tracked files have uncommitted changes (e.g. right after
`dvc exp run` applied an experiment), so only the workspace's own changes show. In a shallow
clone the base is fetched when possible, and the report says so plainly when it is not.

Each test-metric delta is also given in units of that metric's seed-to-seed std (sigma) on the
default params (row `default` of bench/results/ablation.json): two runs differing only in seed
differ with std sqrt(2) sigma, so |delta| <= 2 sqrt(2) sigma is "within seed noise" (~95% of
such pairs). Without that file the column says "no spread measured".

Gate: `--fail-on-drop 0.02` exits 1 when test macro-F1 drops by more than 0.02. CPU runs are
deterministic: the same params and seed give the same number again, so a drop comes from the
change, not from nondeterminism. It does not show the change is worse on other seeds or data:
the seed-to-seed std of test macro-F1 exceeds 0.02, and the report says where a drop stands.

Run:  make report [BASE=<rev>] [FAIL_ON_DROP=0.02]
      python -m tools.report --base main --output report.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from stages.common import ROOT
from tools import dvc_json
from tools.base_rev import BaseUnavailable, resolve_base

TEST_METRICS = "metrics/evaluate.json"
HEADLINE = ("accuracy", "macro_f1", "weighted_f1", "ece", "ce_loss")  # in this order
# Last key component -> whether a rise is good; other numbers (counts, epochs) get no verdict.
DIRECTION = {**dict.fromkeys(("accuracy", "macro_f1", "weighted_f1", "f1", "precision", "recall",
                              "val_accuracy", "val_macro_f1"), True),
             **dict.fromkeys(("ece", "ce_loss", "loss", "val_loss", "val_ce_loss"), False)}
PLOTS = ("plots/train/history.png", "plots/evaluate/confusion.png")
ABLATION = "bench/results/ablation.json"
ABLATION_ROW = "default"  # params.yaml's default over seeds (bench/ablation_rows.py, DEFAULT_ROW)
NOISE = 2 * math.sqrt(2)  # |delta| within this many sigma: what two seeds alone give ~95% of the time
NO_SPREAD = "no spread measured"


@dataclass(frozen=True)
class Change:
    path: str
    key: str
    old: object
    new: object

    @property
    def delta(self) -> float | None:
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (self.old, self.new))
        return self.new - self.old if numeric else None


# ------------------------------------------------------------------ pure: diffs -> markdown


def changes(diff: dict) -> list[Change]:
    """Flatten `dvc {params,metrics} diff --json` output: {path: {key: {old, new, ...}}}."""
    return [Change(path, key, entry.get("old"), entry.get("new"))
            for path, entries in sorted(diff.items()) for key, entry in sorted(entries.items())]


def fmt(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return f"`{value}`" if isinstance(value, (str, list, dict)) else str(value)


def fmt_delta(change: Change) -> str:
    delta = change.delta
    if delta is None:
        if change.old == change.new:
            return "—"
        return "new" if change.old is None else "removed" if change.new is None else "changed"
    rise_is_good = DIRECTION.get(change.key.rsplit(".", 1)[-1])
    text = f"{delta:+d}" if isinstance(delta, int) else f"{delta:+.4f}"
    if delta == 0 or rise_is_good is None:
        return text if delta else "0"
    return f"{text} {'🟢' if (delta > 0) == rise_is_good else '🔻'}"


def spread_cell(change: Change, std: float | None) -> str:
    """Where a delta stands against the seed-to-seed std of its metric."""
    if std is None:
        return NO_SPREAD
    if change.delta is None:
        return "—"
    sigmas = abs(change.delta) / std
    return f"{sigmas:.1f} σ (σ {std:.4f}): {'within' if sigmas <= NOISE else 'beyond'} seed noise"


def spread_note(spread: dict | None) -> str:
    if spread is None:
        return f"_Seed spread: {NO_SPREAD} (no `{ABLATION}` with a `{ABLATION_ROW}` row over 2+ seeds)._"
    return (f"_σ: seed-to-seed std of the default params over seeds {', '.join(map(str, spread['seeds']))} "
            f"(`{ABLATION}`, commit {spread['commit']}). Within seed noise: |Δ| ≤ 2√2 σ, what two runs "
            "differing only in seed give about 95% of the time._")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def test_tables(metric_changes: list[Change], spread: dict | None = None) -> list[str]:
    """Headline test metrics, then per-class F1, each with base, this run, delta and the delta
    against the seed spread (`spread["std"]`: metric key -> sigma; None: not measured)."""
    test = {c.key: c for c in metric_changes if c.path == TEST_METRICS}
    if not test:
        return [f"_No `{TEST_METRICS}` in either revision: run `dvc repro` first._"]

    def noise(c: Change) -> str:
        return spread_cell(c, spread["std"].get(c.key) if spread else None)

    head = [[name, fmt(test[name].old), fmt(test[name].new), fmt_delta(test[name]), noise(test[name])]
            for name in HEADLINE if name in test]
    per_class = [[key.split(".")[1], fmt(c.old), fmt(c.new), fmt_delta(c), noise(c)]
                 for key, c in test.items() if key.startswith("per_class.") and key.endswith(".f1")]
    return ["### Test metrics", "", table(["metric", "base", "this", "Δ", "Δ vs seed spread"], head), "",
            "### Per-class test F1", "", table(["class", "base", "this", "Δ", "Δ vs seed spread"], per_class), "",
            spread_note(spread)]


def macro_f1_drop(metric_changes: list[Change]) -> float | None:
    """How much test macro-F1 fell (positive = a drop); None when either side lacks it."""
    for c in metric_changes:
        if c.path == TEST_METRICS and c.key == "macro_f1" and c.delta is not None:
            return -c.delta
    return None


def gate_verdict(drop: float | None, threshold: float | None, std: float | None = None) -> tuple[bool, str]:
    """(passed, one-line verdict) of the FAIL_ON_DROP gate; `std`: seed-to-seed std of test macro-F1."""
    if threshold is None:
        return True, ""
    if drop is None:
        return False, (f"**Gate failed**: test macro-F1 is missing on one side, so a drop of more than {threshold} "
                       "cannot be ruled out.")
    if drop > threshold:
        verdict = f"**Gate failed**: test macro-F1 dropped by {drop:.4f}, more than the allowed {threshold}."
        if std is not None and drop <= NOISE * std:
            verdict += (f" Seeds alone move it this much (σ {std:.4f}, the drop is {drop / std:.1f} σ): "
                        "rerun on other seeds before concluding the change is worse.")
        return False, verdict
    return True, f"Gate passed: test macro-F1 change {-drop:+.4f} (allowed drop {threshold})."


def render(title: str, params_diff: dict, metrics_diff: dict, plots: list[str],
           threshold: float | None, spread: dict | None = None) -> tuple[str, bool]:
    """The whole report and whether the gate passed. Diffs are `--all` (unchanged entries too);
    `spread` is `seed_spread`'s (None: no seed spread measured)."""
    metric_changes = changes(metrics_diff)
    moved = [c for c in metric_changes if c.old != c.new]
    changed_params = [c for c in changes(params_diff) if c.old != c.new]
    std = spread["std"].get("macro_f1") if spread else None
    passed, verdict = gate_verdict(macro_f1_drop(metric_changes), threshold, std)
    parts = [f"## {title}", ""]
    if verdict:
        parts += [verdict, ""]
    parts += ["### Params changed", ""]
    parts += [table(["param", "base", "this"], [[f"`{c.key}`", fmt(c.old), fmt(c.new)] for c in changed_params])
              if changed_params else "No params changes."]
    parts += ["", *test_tables(metric_changes, spread), "", "### All metric changes", ""]
    parts += [table(["file", "metric", "base", "this", "Δ"],
                    [[c.path, c.key, fmt(c.old), fmt(c.new), fmt_delta(c)] for c in moved])
              if moved else "No metric changes."]
    if plots:
        parts += ["", "### Plots", "", *[f"![{p}]({p})" for p in plots]]
    return "\n".join(parts) + "\n", passed


# ------------------------------------------------------------------ I/O: results, git and dvc


def seed_spread(root: Path) -> dict | None:
    """{"std": {metric key of metrics/evaluate.json: sigma}, "seeds", "commit"} of the ablation's
    ABLATION_ROW row (the default params over seeds); None when the file, the row or 2+ seeds are missing."""
    path = root / ABLATION
    res = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    row = next((r for r in res.get("rows", []) if r.get("name") == ABLATION_ROW), {})
    # ablation names per-class F1 `<class>_f1`; identical values on every seed give no yardstick
    std = {key if key in HEADLINE else f"per_class.{key.removesuffix('_f1')}.f1": stat["std"]
           for key, stat in row.get("test", {}).items()
           if len(stat.get("values", [])) > 1 and (stat.get("std") or 0) > 0}
    if not std:
        return None
    return {"std": std, "seeds": sorted(set(row.get("seeds", []))), "commit": str(res.get("commit", ""))[:7]}


def dvc_diff(kind: str, base: str, rev: str | None, root: Path) -> dict:
    """`dvc {params,metrics} diff --all --json base [rev]` as a dict."""
    return dvc_json(root, kind, "diff", "--all", base, *([rev] if rev else [])) or {}


def report(base: str | None, rev: str | None, threshold: float | None, root: Path = ROOT) -> tuple[str, bool]:
    """The markdown report for `rev` (None = workspace) against `base`, and whether the gate passed."""
    try:
        base_commit, how = resolve_base(base, root, workspace=rev is None)
    except BaseUnavailable as err:
        passed, verdict = gate_verdict(None, threshold)
        text = f"## Pipeline report\n\n**No comparison**: {err}\n" + (f"\n{verdict}\n" if verdict else "")
        return text, passed
    this = f"`{rev}`" if rev else "workspace"
    plots = [p for p in PLOTS if (root / p).exists()] if rev is None else []
    return render(f"Pipeline report: {this} vs `{base_commit}` ({how})",
                  dvc_diff("params", base_commit, rev, root), dvc_diff("metrics", base_commit, rev, root),
                  plots, threshold, seed_spread(root))


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=None, help="base revision (default: merge-base with main; on main, HEAD~1, "
                        "or HEAD when the workspace has uncommitted changes)")
    parser.add_argument("--rev", default=None, help="revision to report on (default: the workspace)")
    parser.add_argument("--fail-on-drop", type=float, default=None, metavar="F1",
                        help="exit 1 when test macro-F1 drops by more than this")
    parser.add_argument("--output", type=Path, default=None, help="also write the report to this file")
    args = parser.parse_args(argv)
    text, passed = report(args.base or None, args.rev or None, args.fail_on_drop, root)
    print(text, end="")
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

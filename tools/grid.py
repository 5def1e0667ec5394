"""Render finished DVC experiments as a grid: a test metric per value of two params.

Reads `dvc exp show --json` (the current commit and its finished experiments, however
they ran: queued, --temp or in the workspace), keeps those that differ from the commit only
in the `--rows` and `--cols` params and the `--repeat` param (default `seed`), groups them
by rows x cols and reports mean +- std over the repeats in each cell. Prints a markdown
table; writes the figure to plots/grid/<metric>.png and the table to plots/grid/<metric>.md.

Queue and run a grid first, e.g.
    dvc exp run --queue -S 'loss.gamma=0,1,2' -S 'alpha.method=none,inverse'
    dvc queue start -j 1        # one at a time: two trainings would fight for 2 cores
Run: make grid  |  python -m tools.grid --rows loss.gamma --cols alpha.method --metric macro_f1
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.common import ROOT, save_png, write_text
from stages.log import flatten
from tools import dvc_json

TEST_METRICS = "metrics/evaluate.json"
SUMMARY = ("macro_f1", "accuracy", "weighted_f1", "ece")  # columns of the long table


@dataclass(frozen=True)
class Run:
    name: str
    params: dict[str, Any]
    metrics: dict[str, Any]


def dotted(tree: dict[str, Any], key: str) -> Any:
    """tree["a"]["b"] for key "a.b"; None when any part is missing."""
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def runs_from_exp_show(rows: list[dict], dedupe: bool = True) -> list[Run]:
    """Baseline commits and their experiments that have test metrics, from `dvc exp show --json`.

    The workspace entry is skipped (it is either the baseline again or uncommitted work);
    with `dedupe`, runs with identical params are kept once (CPU runs are deterministic).
    """
    def to_run(entry: dict) -> Run | None:
        data = entry.get("data") or {}
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data")
        metrics = ((data.get("metrics") or {}).get(TEST_METRICS) or {}).get("data")
        if entry.get("error") or not params or not metrics:
            return None
        return Run(entry.get("name") or entry["rev"][:7], params, metrics)

    found: list[Run | None] = []
    for baseline in rows:
        if baseline.get("rev") == "workspace":
            continue
        found.append(to_run(baseline))
        for group in baseline.get("experiments") or []:
            if (group.get("executor") or {}).get("state") in ("queued", "running", "failed"):
                continue  # a running experiment shows its baseline's metrics until it finishes
            found += [to_run(rev) for rev in group.get("revs") or []]
    if not dedupe:
        return list(filter(None, found))
    unique: dict[str, Run] = {}
    for run in filter(None, found):
        unique.setdefault(json.dumps(canonical(run.params), sort_keys=True), run)
    return list(unique.values())


def canonical(value: Any) -> Any:
    """Params with ints as floats: `-S loss.gamma=2` stores 2 where params.yaml has 2.0."""
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def same_setting(runs: list[Run], free: set[str]) -> tuple[list[Run], list[Run]]:
    """(runs whose params equal the first run's except the `free` keys, the others).

    The first run is the baseline commit: a grid over two params compares like with like only
    when nothing else changed (an experiment that also changed, say, the LR is left out).
    """
    def fixed(run: Run) -> str:
        flat = {k: v for k, v in flatten(canonical(run.params)).items() if k not in free}
        return json.dumps(flat, sort_keys=True)

    settings = [fixed(r) for r in runs]
    same = [s == settings[0] for s in settings]
    return [r for r, ok in zip(runs, same) if ok], [r for r, ok in zip(runs, same) if not ok]


def cells(runs: list[Run], rows: str, cols: str) -> dict[tuple[Any, Any], list[Run]]:
    """Runs grouped by (row value, col value), sorted; runs lacking either param are left out."""
    grouped: dict[tuple[Any, Any], list[Run]] = defaultdict(list)
    for run in runs:
        r, c = canonical(dotted(run.params, rows)), canonical(dotted(run.params, cols))
        if r is not None and c is not None:
            grouped[(r, c)].append(run)
    return dict(sorted(grouped.items(), key=lambda kv: (order(kv[0][0]), order(kv[0][1]))))


def order(value: Any) -> tuple:
    """Sort key: numbers numerically, then anything else by its text."""
    return (0, value, "") if isinstance(value, float) else (1, 0.0, str(value))


def axes(grid: dict[tuple[Any, Any], list[Run]]) -> tuple[list[Any], list[Any]]:
    """The sorted distinct row values and col values of a grid."""
    return sorted({r for r, _ in grid}, key=order), sorted({c for _, c in grid}, key=order)


def cell(values: list[float], digits: int = 3) -> str:
    """"mean ± std" of repeats, the value alone for one run, "—" for none."""
    if not values:
        return "—"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def fmt_cell(values: list[float]) -> str:
    """`cell` with the number of runs when there are several."""
    return cell(values) + (f" (n={len(values)})" if len(values) > 1 else "")


def markdown(grid: dict[tuple[Any, Any], list[Run]], rows: str, cols: str, metric: str) -> str:
    """A pivot table of `metric` (rows x cols), then one line per cell with the summary metrics."""
    row_values, col_values = axes(grid)
    lines = [f"Test {metric}, mean ± std over runs (n) where a cell has several:", "",
             f"| {rows} \\ {cols} | " + " | ".join(map(str, col_values)) + " |",
             "|---|" + "---|" * len(col_values)]
    for r in row_values:
        values = [fmt_cell([x.metrics[metric] for x in grid[(r, c)]]) if (r, c) in grid else "—" for c in col_values]
        lines.append(f"| {r} | " + " | ".join(values) + " |")
    lines += ["", f"| {rows} | {cols} | runs | " + " | ".join(SUMMARY) + " | experiments |",
              "|---|---|---|" + "---|" * len(SUMMARY) + "---|"]
    for (r, c), members in grid.items():
        stats = [cell([m.metrics[k] for m in members]) for k in SUMMARY]
        lines.append(f"| {r} | {c} | {len(members)} | " + " | ".join(stats) + " | "
                     + ", ".join(m.name for m in members) + " |")
    return "\n".join(lines) + "\n"


def save_figure(grid: dict[tuple[Any, Any], list[Run]], rows: str, cols: str, metric: str, path: Path) -> None:
    """Grouped bars: one group per row value, one bar per col value, std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    row_values, col_values = axes(grid)
    width = 0.8 / len(col_values)
    fig, ax = plt.subplots(figsize=(1.5 + 1.6 * len(row_values), 4), dpi=100)
    for j, c in enumerate(col_values):
        stats = [mean_std([m.metrics[metric] for m in grid[(r, c)]]) if (r, c) in grid else (0.0, 0.0)
                 for r in row_values]
        xs = [i + (j - (len(col_values) - 1) / 2) * width for i in range(len(row_values))]
        errors = [s[1] for s in stats] if any(s[1] for s in stats) else None  # no bars for single runs
        bars = ax.bar(xs, [s[0] for s in stats], width, yerr=errors, capsize=3, label=f"{cols}={c}")
        ax.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    ax.set_xticks(range(len(row_values)), [str(r) for r in row_values])
    ax.set(xlabel=rows, ylabel=f"test {metric}", title=f"Test {metric} per {rows} and {cols}")
    ax.set_ylim(0, min(1.0, 1.15 * max(max(m.metrics[metric] for m in ms) for ms in grid.values())))
    ax.legend(loc="lower right", fontsize=8)
    save_png(fig, path)


def exp_show(root: Path, rev: str | None = None) -> list[dict]:
    """`dvc exp show --json` for the experiments of `rev` (default HEAD)."""
    return dvc_json(root, "exp", "show", *(["--rev", rev] if rev else [])) or []


def run(rows: str, cols: str, metric: str, root: Path = ROOT, rev: str | None = None, repeat: str = "seed") -> str:
    """Table of the finished experiments of `rev`; writes plots/grid/<metric>.{png,md} under `root`."""
    kept, left_out = same_setting(runs_from_exp_show(exp_show(root, rev)), {rows, cols, repeat})
    grid = cells(kept, rows, cols)
    if not grid:
        raise SystemExit(f"grid: no finished experiment has both {rows} and {cols} and {TEST_METRICS}; "
                         "queue some (`dvc exp run --queue -S ...`) and run them (`dvc queue start -j 1`)")
    text = markdown(grid, rows, cols, metric)
    if left_out:
        text += (f"\nLeft out {len(left_out)} finished experiment(s) that also change params other than "
                 f"{rows}, {cols} and {repeat}: {', '.join(r.name for r in left_out)}.\n")
    save_figure(grid, rows, cols, metric, root / f"plots/grid/{metric}.png")
    write_text(root / f"plots/grid/{metric}.md", text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="loss.gamma", help="param whose values make the rows / x groups")
    parser.add_argument("--cols", default="alpha.method", help="param whose values make the columns / bars")
    parser.add_argument("--metric", default="macro_f1", help=f"key of {TEST_METRICS} to compare")
    parser.add_argument("--rev", default=None, help="commit the experiments are based on (default: HEAD)")
    parser.add_argument("--repeat", default="seed", help="param whose values are repeats of a cell (mean ± std)")
    args = parser.parse_args(argv)
    print(run(args.rows, args.cols, args.metric, rev=args.rev, repeat=args.repeat), end="")
    print(f"\nwrote plots/grid/{args.metric}.png and plots/grid/{args.metric}.md")


if __name__ == "__main__":
    main()

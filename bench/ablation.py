"""Ablation of the remedies, through the pipeline itself, over seeds.

Each row of STEPS adds one remedy to a plain cross-entropy fine-tune, ending at the mpnet defaults
of 2026-12-04 (row `final`; every row pins each key a later row or default changes, so rows queued
today still run as they ran: each batch padded whole, long reviews cut after their beginning, no
temperature); each row of WITHOUT is `final` less one remedy (leave one out), compared with it on
the same seeds. Row `default` is params.yaml's default today (`final` without back-translation,
with head-and-tail truncation and sub-batches), compared with `no-backtrans`, the default it
replaced; each row of DEFAULT_WITHOUT is `default` less one remedy, compared with `default` (the
rows: bench/ablation_rows.py). Every row runs for each seed as a named DVC experiment
(`abl-<row>-s<seed>`), queued and run one at a time. The report reads the finished experiments
(`dvc exp show --json`) and the train times their `log` stage sent to MLflow, and prints mean +-
std over seeds, next to the majority-class and TF-IDF + logistic-regression
references (fitted on the same splits).

    python bench/ablation.py queue [--seeds 42 43 44] [--rows final] && dvc queue start -j 1
    python bench/ablation.py report [--rev <baseline commit> ...]  # -> bench/results/ablation.{json,md}, plots/ablation/
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ablation_rows import BASE, SAME_RUNS, rows  # noqa: E402
from bench.record import experiment, git  # noqa: E402
from bench.references import flatten_test, references  # noqa: E402
from stages.common import ROOT, save_png, workspace_root, write_text  # noqa: E402
from tools.grid import Run, cell, dotted, exp_show, mean_std, runs_from_exp_show  # noqa: E402

RECORDED = ROOT / "bench/results/crossfit.json"
RESULTS = ROOT / "bench/results/ablation.json"
COLUMNS = [("macro_f1", "test macro-F1"), ("accuracy", "accuracy"), ("neutral_f1", "neutral F1"), ("ece", "ECE")]


def queue(seeds: list[int], only: list[str] | None = None) -> None:
    for seed in seeds:  # all rows of one seed first: a partial run still compares every row
        for name, _, overrides in rows():
            if only and name not in only:
                continue
            sets = [a for key, value in {**overrides, "seed": seed}.items() for a in ("-S", f"{key}={value}")]
            cmd = [sys.executable, "-m", "dvc", "exp", "run", "--queue", "-n", f"abl-{name}-s{seed}", *sets]
            subprocess.run(cmd, cwd=ROOT, check=True)


def train_times() -> dict[str, float]:
    """Run name -> train wall time (s), from the MLflow store the log stage writes."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workspace_root() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("text-classification")
    runs = client.search_runs([experiment.experiment_id], max_results=5000) if experiment else []
    return {r.info.run_name: r.data.metrics["runtime.train.wall_time_s"]
            for r in runs if "runtime.train.wall_time_s" in r.data.metrics}


def kept_val_f1(shown: list[dict]) -> dict[str, float]:
    """Experiment name -> validation macro-F1 of the model `train` kept: what a choice may look at."""
    out: dict[str, float] = {}
    for baseline in shown:
        for group in baseline.get("experiments") or []:
            for rev in group.get("revs") or []:
                train = (((rev.get("data") or {}).get("metrics") or {}).get("metrics/train.json") or {}).get("data")
                if rev.get("name") and "heldout" in (train or {}):  # validation, or out-of-fold
                    out[rev["name"]] = train["heldout"]["macro_f1"]
                elif rev.get("name") and train:  # runs from before held-out scores were recorded
                    out[rev["name"]] = (train["swa"] if train["kept"] == "swa" else train["best"])["val_macro_f1"]
    return out


def seed_of(run: Run) -> int:
    return int(run.name.rsplit("-s", 1)[1])


def row_of(run: Run) -> str | None:
    """The row a run belongs to: `abl-<row>-s<seed>`, or a SAME_RUNS experiment whose params match the row's."""
    stem = run.name.rsplit("-s", 1)[0]
    if stem.startswith("abl-"):
        return stem[4:]
    row = SAME_RUNS.get(stem)
    if row:
        overrides = dict((name, o) for name, _, o in rows())[row]
        differ = sorted(key for key, value in overrides.items() if dotted(run.params, key) != value)
        if differ:
            raise SystemExit(f"{run.name} ran with other params than row {row!r}: {', '.join(differ)}; "
                             f"drop it from SAME_RUNS or queue the row (bench/ablation.py queue --rows {row})")
    return row


def recorded_runs(path: Path = RECORDED) -> tuple[list[Run], dict[str, float], dict[str, float]]:
    """bench/encoder.py's records of SAME_RUNS experiments, as Runs with the params they ran with (the
    commit's params.yaml plus their `-S` overrides), and their validation macro-F1 and train time by name."""
    import yaml

    runs, vals, times = [], {}, {}
    for rec in json.loads(path.read_text()) if path.exists() else []:
        name = experiment(rec)
        if name.rsplit("-s", 1)[0] not in SAME_RUNS:
            continue
        params = yaml.safe_load(git("show", f"{rec['commit']}:params.yaml", check=True))
        for override in rec["overrides"]:
            key, value = override.split("=", 1)
            *parents, leaf = key.split(".")
            node = params
            for part in parents:
                node = node[part]
            node[leaf] = yaml.safe_load(value)
        metrics = {"macro_f1": rec["test_macro_f1"], "accuracy": rec["test_accuracy"], "ece": rec["test_ece"],
                   "per_class": {"neutral": {"f1": rec["test_neutral_f1"]}}}
        runs.append(Run(name, params, metrics))
        vals[name], times[name] = rec["val_macro_f1"], rec["train_wall_s"]
    return runs, vals, times


def group_rows(runs: list[Run]) -> dict[str, list[Run]]:
    """Row name -> its runs (`row_of`), one per seed: a (row, seed) met again (a rerun, or the same
    experiment under several `--rev`s) replaces the earlier one, so no seed counts twice."""
    latest: dict[tuple[str, int], Run] = {}
    for run in runs:
        row = row_of(run)
        if row:
            latest[(row, seed_of(run))] = run
    found: dict[str, list[Run]] = {}
    for (row, _), run in latest.items():
        found.setdefault(row, []).append(run)
    return found


def summary(values: list[float]) -> dict:
    """mean, std (sample) and the values themselves; std 0 for one value, nulls for none."""
    if not values:
        return {"mean": None, "std": None, "values": []}
    mean, std = mean_std(values)
    return {"mean": mean, "std": std if len(values) > 1 else 0.0, "values": values}


def paired_vs(scores: dict[int, float], before: dict[int, float]) -> dict | None:
    """Per-seed test macro-F1 difference (seed -> score) from the row above, on the seeds both rows ran. The
    test split is the same for every seed, so this is the spread over training seeds only (plain SE: no
    split-overlap correction applies to a fixed test set; it does not cover the sampling of the 379 test reviews)."""
    from bench.stats import paired

    diffs = [score - before[seed] for seed, score in scores.items() if seed in before]
    return paired(diffs) if len(diffs) > 1 else None


def earlier_rows(path: Path = RESULTS) -> list[dict]:
    """The rows of a committed results file, each with the baseline commits its experiments ran from."""
    if not path.exists():
        return []
    res = json.loads(path.read_text())
    return [{**row, "baselines": row.get("baselines", res["baselines"])} for row in res["rows"]]


def results(found: dict[str, list[Run]], times: dict[str, float], vals: dict[str, float], refs, revs,
            kept: list[dict] | None = None) -> dict:
    """What the report found, as the results file bench/results/ablation.json holds it. A STEPS row is
    compared with the nearest STEPS row above it that ran; any other row with its BASE row. `kept` (`report
    --keep`): rows of the results file before that none of these experiments re-ran, carried over as
    recorded (with the baselines their experiments ran from) and paired with as the row above."""
    here = [git("rev-parse", rev) for rev in revs or ["HEAD"]]
    earlier = {row["name"]: row for row in kept or []}
    out, previous, scores = [], None, {}
    for name, label, overrides in rows():
        members = sorted(found.get(name, []), key=seed_of)
        if members:
            scores[name] = {seed_of(m): m.metrics["macro_f1"] for m in members}
            base_name = BASE.get(name, previous)
            base = scores.get(base_name) if base_name else None
            out.append({"name": name, "label": label, "overrides": overrides, "baselines": here,
                        "seeds": [seed_of(m) for m in members], "experiments": [m.name for m in members],
                        "test": {k: summary([flatten_test(m.metrics)[k] for m in members]) for k, _ in COLUMNS},
                        "val_macro_f1": summary([vals[m.name] for m in members if m.name in vals]),
                        "train_wall_s": summary([times[m.name] for m in members if m.name in times]),
                        "vs_row": base_name if base else None,
                        "vs_previous": paired_vs(scores[name], base) if base else None})
        elif name in earlier:
            out.append({**earlier[name], "label": label})  # as recorded, under today's label
            scores[name] = dict(zip(earlier[name]["seeds"], earlier[name]["test"]["macro_f1"]["values"]))
        else:
            continue
        if name not in BASE:
            previous = name
    return {"date": time.strftime("%Y-%m-%d"), "commit": git("rev-parse", "HEAD"),
            "baselines": list(dict.fromkeys(b for row in out for b in row["baselines"])) or here,
            "command": " ".join(["python bench/ablation.py report", *(["--rev", *revs] if revs else []),
                                 *(["--keep"] if kept else [])]),
            "device": "cpu (2 cores)", "seeds": sorted({s for row in out for s in row["seeds"]}), "rows": out,
            "references": [{"name": n, "test": {k: summary(v[k]) for k, _ in COLUMNS}} for n, v in refs]}


def fmt(stat: dict, digits: int = 3) -> str:
    return cell(stat["values"], digits)


def table(res: dict) -> str:
    """The markdown table of a results dict (what README.md and BENCHMARKS.md quote)."""
    lines = ["| row | seeds | val macro-F1 | " + " | ".join(label for _, label in COLUMNS)
             + " | Δ test macro-F1, paired (vs the row above; a 'without' row vs its default) | train time (s) |",
             "|---|---|---|" + "---|" * len(COLUMNS) + "---|---|"]
    for ref in res["references"]:
        lines.append(f"| {ref['name']} (reference) | {len(ref['test']['macro_f1']['values'])} | — | "
                     + " | ".join(fmt(ref["test"][k]) for k, _ in COLUMNS) + " | — | — |")
    for row in res["rows"]:
        vs = row["vs_previous"]
        delta = f"{vs['mean']:+.3f} ± {vs['se']:.3f} (better on {vs['better']}/{vs['n']})" if vs else "—"
        lines.append(f"| {row['label']} | {len(set(row['seeds']))} | {fmt(row['val_macro_f1'])} | "
                     + " | ".join(fmt(row["test"][k]) for k, _ in COLUMNS)
                     + f" | {delta} | {fmt(row['train_wall_s'], 0)} |")
    return "\n".join(lines) + "\n"


def save(res: dict) -> None:
    """bench/results/ablation.json, and its table beside it as .md."""
    md = (f"<!-- written by bench/ablation.py from ablation.json ({res['date']}, commit {res['commit'][:7]}, "
          f"experiments of {', '.join(b[:7] for b in res['baselines'])}) -->\n{table(res)}")
    for path, text in ((RESULTS, json.dumps(res, indent=2) + "\n"), (RESULTS.with_suffix(".md"), md)):
        write_text(path, text)


def figure(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['name']} (ref)" for r in res["references"]] + [row["label"] for row in res["rows"]]
    stats = [(r["test"]["macro_f1"]["mean"], r["test"]["macro_f1"]["std"]) for r in res["references"] + res["rows"]]
    fig, ax = plt.subplots(figsize=(12, 0.5 + 0.45 * len(labels)), dpi=100)
    ys = range(len(labels))[::-1]
    ax.barh(list(ys), [s[0] for s in stats], xerr=[s[1] for s in stats], capsize=3,
            color=["0.6"] * len(res["references"]) + ["tab:blue"] * len(res["rows"]))
    for y, (mean, std) in zip(ys, stats):
        ax.text(mean + std + 0.015, y, f"{mean:.3f}", va="center", fontsize=8)  # clear of the error bar
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.set(xlabel="test macro-F1 (mean ± std over seeds)", xlim=(0, 1), title="Ablation on the bundled drug reviews")
    save_png(fig, path)


def report(revs: list[str], keep: bool = False) -> str:
    """Results of the `abl-*` experiments of the baseline commits `revs` (default HEAD), with the rows of
    the committed results file they did not re-run when `keep`, written to bench/results/ablation.{json,md}
    and plots/ablation/; returns the table."""
    shown = [exp_show(ROOT, rev) for rev in revs or [None]]
    recorded, vals, times = recorded_runs()  # first: an experiment of the same name below replaces its record
    runs = recorded + [run for rows_of_rev in shown for run in runs_from_exp_show(rows_of_rev, dedupe=False)]
    found, kept = group_rows(runs), earlier_rows() if keep else None
    seeds = sorted({seed_of(r) for group in found.values() for r in group}
                   | {s for row in kept or [] for s in row["seeds"]}) or [42]
    vals.update({name: f1 for one in shown for name, f1 in kept_val_f1(one).items()})
    res = results(found, {**times, **train_times()}, vals, references(seeds), revs, kept)
    figure(res, ROOT / "plots/ablation/macro_f1.png")
    save(res)
    return table(res)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("queue", help="queue every row for every seed")
    q.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    q.add_argument("--rows", nargs="+", help="only these rows (default: all)", choices=[n for n, _, _ in rows()])
    r = sub.add_parser("report", help="table (stdout) and figure of the finished rows")
    r.add_argument("--rev", nargs="+", default=[], help="baseline commit(s) of the experiments (default: HEAD)")
    r.add_argument("--keep", action="store_true",
                   help="carry over the committed results file's rows these experiments did not re-run")
    args = parser.parse_args()
    if args.command == "queue":
        queue(args.seeds, args.rows)
    else:
        print(report(args.rev, args.keep), end="")


if __name__ == "__main__":
    main()

"""The decision rule, chosen on held-out rows: argmax against per-class biases tuned for macro-F1.

`evaluate` tunes biases b for argmax(log p + b) on the held-out rows (validation, or out-of-fold
with train.folds > 1) and reports them on test; their in-sample held-out score cannot say whether
they generalise. This scores the rule as it would meet new rows, on the held-out rows alone
(stages/evaluate.py, cross_validated_bias_macro_f1: each of 5 stratified parts decided with the
biases tuned on the other 4), for runs that bench/encoder.py made in REPO: each results row's
experiment (the `-n` name of its command, under its commit) has its models/train/heldout.json in REPO's DVC
cache. The test split is not read.

Run: python bench/decision.py REPO [--results crossfit --results encoder] [--keep]
     -> bench/results/decision.{json,md}
`--keep` carries over the committed rows REPO no longer has the experiments for, under the profile names
the results files use today.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.profile_tables import mean_std  # noqa: E402
from bench.record import experiment, start, write  # noqa: E402
from bench.stats import paired, split_sizes  # noqa: E402
from stages.evaluate import cross_validated_bias_macro_f1, macro_f1_with_bias  # noqa: E402

HALF_WIDTH = 2.0  # params.yaml's evaluate.bias_search, under which the runs' bias_tuned rows were made


def profile_now(row: dict, results: list[dict]) -> str:
    """The profile the results files call a decision row's run today: that of the results row of its
    experiment (or, for rows that predate recording it, the only results row of its commit and seed)."""
    same = [r for r in results if r["commit"] == row["commit"] and r["seed"] == row["seed"]]
    if "experiment" in row:
        same = [r for r in same if experiment(r) == row["experiment"]]
    elif any(r["profile"] == row["profile"] for r in same):
        return row["profile"]
    return same[0]["profile"] if len(same) == 1 else row["profile"]


def cached_model_files(repo: Path, row: dict, *relpaths: str) -> list[dict] | None:
    """models/train/RELPATH (json) for each RELPATH of a results row's experiment, from REPO's DVC cache
    (its dvc.lock read once); None if the experiment or its cached model is gone."""
    name = experiment(row)
    ref = f"refs/exps/{row['commit'][:2]}/{row['commit'][2:]}/{name}"
    lock = subprocess.run(["git", "show", f"{ref}:dvc.lock"], cwd=repo, capture_output=True, text=True)
    if lock.returncode:
        return None
    out = next(o for o in yaml.safe_load(lock.stdout)["stages"]["train"]["outs"] if o["path"] == "models/train")
    cache = repo / ".dvc/cache/files/md5"
    listing = cache / out["md5"][:2] / out["md5"][2:]
    if not listing.exists():
        return None
    md5s = {f["relpath"]: f["md5"] for f in json.loads(listing.read_text())}
    return [json.loads((cache / md5s[p][:2] / md5s[p][2:]).read_text()) for p in relpaths]


def score(heldout: dict, labels: list[str]) -> dict:
    """Held-out macro-F1 of argmax and of the cross-validated bias rule, on the same rows."""
    probs = np.array(heldout["probs"], dtype=np.float64)
    y = np.array([labels.index(lab) for lab in heldout["labels"]])
    return {"heldout": heldout["what"], "rows": len(y),
            "argmax_macro_f1": macro_f1_with_bias(probs, y, np.zeros(len(labels))),
            "bias_cv_macro_f1": cross_validated_bias_macro_f1(probs, y, len(labels), HALF_WIDTH)}


def table(rows: list[dict]) -> str:
    """Per profile: held-out argmax and cross-validated bias macro-F1, and their paired difference with
    the Nadeau-Bengio corrected SE (n_test / n_train of one split: val / train, or 1 / (K - 1) for K folds)."""
    lines = ["| profile | seeds | held out (rows) | argmax macro-F1 | bias rule, cross-validated | "
             "Δ bias - argmax (paired, corrected SE, higher on) |", "|---|---|---|---|---|---|"]
    for profile in dict.fromkeys(r["profile"] for r in rows):
        r = [x for x in rows if x["profile"] == profile]
        diffs = [x["bias_cv_macro_f1"] - x["argmax_macro_f1"] for x in r]
        k, sizes = r[0]["folds"], next((x for x in r if x["n_train"]), None)
        n_train, n_test = split_sizes(k, (sizes or {}).get("n_train"), (sizes or {}).get("n_val"))
        delta = ""
        if len(r) > 1:
            p = paired(diffs, n_train, n_test)
            delta = f"{p['mean']:+.3f} ± {p['se_corrected']:.3f} ({p['better']}/{p['n']})"
        col = lambda key: mean_std([x[key] for x in r])  # noqa: E731
        lines.append(f"| {profile} | {','.join(str(x['seed']) for x in r)} | {r[0]['heldout']} ({r[0]['rows']}) | "
                     f"{col('argmax_macro_f1')} | {col('bias_cv_macro_f1')} | {delta} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path)
    parser.add_argument("--results", action="append", default=[], help="bench/results/NAME.json (crossfit, encoder)")
    parser.add_argument("--keep", action="store_true", help="carry over committed rows REPO has no experiment for")
    args = parser.parse_args()
    meta, found, missing = start(), {}, []
    results = [row for name in args.results or ["crossfit", "encoder"]
               for row in json.loads((ROOT / f"bench/results/{name}.json").read_text())]
    committed = ROOT / "bench/results/decision.json"
    for row in json.loads(committed.read_text())["rows"] if args.keep and committed.exists() else []:
        row = {**row, "profile": profile_now(row, results)}
        found[row["profile"], row["seed"]] = row
    for row in results:
        files = cached_model_files(args.repo.resolve(), row, "heldout.json", "pipeline.json")
        if files is None:
            missing.append((row["profile"], row["seed"]))
            continue
        heldout, labels = files[0], files[1]["labels"]
        # a (profile, seed) run again counts once, as in bench/encoder.py's tables: the last run
        found[row["profile"], row["seed"]] = {
            "profile": row["profile"], "seed": row["seed"], "commit": row["commit"], "experiment": experiment(row),
            "folds": len(row["epochs_run"]), "n_train": row.get("n_train"), "n_val": row.get("n_val"),
            **score(heldout, labels)}
    rows = list(found.values())
    missing = [f"{profile}-s{seed}" for profile, seed in dict.fromkeys(missing) if (profile, seed) not in found]
    if missing:
        print(f"decision: not in {args.repo}'s experiments or DVC cache, skipped: {', '.join(missing)}")
    text = table(rows)
    write("decision", meta, {"experiment_commits": sorted({r["commit"][:7] for r in rows}), "rows": rows}, text)
    print(text)


if __name__ == "__main__":
    main()

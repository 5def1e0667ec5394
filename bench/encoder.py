"""Encoder profiles over seeds: quality, `dvc repro` wall time and peak memory, from pipeline runs.

Each (profile, seed) is one `dvc exp run --force` (every stage re-runs, none restored from the run
cache) in REPO, a clone of this repository; the run is timed from outside and its peak resident
memory is the largest process's (the train or evaluate stage). Rows are appended to
bench/results/encoder.json as each run ends, so a long queue can stop and resume (`--resume`
skips pairs already there). The translation cache (.cache/augment) of REPO is kept between runs:
the first run of a clone pays the back-translation, later ones mostly hit the cache; `fresh`
in a row says which it was.

Run: python bench/encoder.py REPO --profile mpnet-freeze10 --seeds 42 43 44 [--resume]
     python bench/encoder.py --table   # print the markdown table of bench/results/encoder.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench/results/encoder.json"
# name -> `-S` overrides on top of the committed params.yaml (the ones a user would pass)
PROFILES = {
    "minilm": [],
    "minilm-freeze4": ["model.freeze_layers=4"],
    "mpnet": ["model.name=bundled-mpnet"],
    "mpnet-freeze10": ["model.name=bundled-mpnet", "model.freeze_layers=10"],
    "mpnet-freeze11": ["model.name=bundled-mpnet", "model.freeze_layers=11"],
    # the top layer alone learns slower per step than the whole encoder, and each epoch is cheap: a higher
    # LR, and a shorter run (full fine-tuning of mpnet bottomed out in val loss at epoch 3 of 6)
    "mpnet-freeze11-short": ["model.name=bundled-mpnet", "model.freeze_layers=11", "train.learning_rate=1e-4",
                             "train.max_epochs=6", "train.swa.start_epoch=3"],
}


PEAK = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=sys.stderr); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def run_pipeline(repo: Path, profile: str, seed: int) -> dict:
    """One forced experiment run in `repo`; its metrics and resources as one results row."""
    fresh = not (repo / ".cache/augment").exists()
    # `dvc exp run` leaves the last experiment's params in the workspace, and -S applies on top of them:
    # every profile starts from the committed params.yaml.
    git(repo, "checkout", "HEAD", "--", "params.yaml")
    sets = [f"seed={seed}", *PROFILES[profile]]
    cmd = ["dvc", "exp", "run", "--force", "-n", f"enc-{profile}-s{seed}", *[a for s in sets for a in ("-S", s)]]
    start, start_epoch = time.perf_counter(), time.time()
    # A fresh child per run, so its RUSAGE_CHILDREN peak (KiB on Linux) is this run's largest process.
    child = subprocess.run([sys.executable, "-c", PEAK, *cmd], cwd=repo, check=True, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    peak_mib = int(child.stdout.split()[-1]) / 1024
    train = json.loads((repo / "metrics/train.json").read_text())
    test = json.loads((repo / "metrics/evaluate.json").read_text())
    runtime = {p.stem: json.loads(p.read_text()) for p in (repo / ".cache/runtime").glob("*.json")}
    times = [json.loads(p.read_text()) | {"stage": p.stem} for p in (repo / ".cache/runtime/times").glob("*.json")]
    kept = train["swa"] if train["kept"] == "swa" else train["best"]
    model = json.loads((repo / "models/train/pipeline.json").read_text())["model"]  # what the run really used
    return {
        "profile": profile, "seed": seed, "overrides": sets, "commit": git(repo, "rev-parse", "HEAD"),
        "date": datetime.date.today().isoformat(), "command": " ".join(cmd), "device": platform.processor() or "cpu",
        "model": model, "fresh_translation_cache": fresh, "wall_s": round(wall, 1), "peak_mib": round(peak_mib),
        "train_wall_s": runtime.get("train", {}).get("wall_time_s"),
        "stage_s": {t["stage"]: round(t["ended"] - t["started"], 1) for t in times if t["started"] >= start_epoch},
        "val_macro_f1": kept["val_macro_f1"], "val_ce_loss": kept["val_ce_loss"],
        "epochs_run": train["epochs_run"], "best_epoch": train["best"]["epoch"], "kept": train["kept"],
        "test_macro_f1": test["macro_f1"], "test_accuracy": test["accuracy"],
        "test_neutral_f1": test["per_class"]["neutral"]["f1"], "test_ece": test["ece"],
    }


def load() -> list[dict]:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else []


def save(rows: list[dict]) -> None:
    """The rows, and their table as markdown beside them (what README.md and BENCHMARKS.md quote)."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    md = (f"<!-- written by bench/encoder.py from {RESULTS.name}; commits "
          f"{', '.join(sorted({r['commit'][:7] for r in rows}))} -->\n{table(rows)}\n")
    for path, text in ((RESULTS, json.dumps(rows, indent=2) + "\n"), (RESULTS.with_suffix(".md"), md)):
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def table(rows: list[dict]) -> str:
    """One line per profile: mean ± std over its distinct seeds (a repeated seed counts once: the last run)."""
    by_profile: dict[str, dict[int, dict]] = {}
    for row in rows:
        by_profile.setdefault(row["profile"], {})[row["seed"]] = row
    lines = ["| profile | seeds | val macro-F1 | test macro-F1 | neutral F1 | ECE | `dvc repro` min, fastest / mean "
             "| peak GiB |", "|---|---|---|---|---|---|---|---|"]
    for profile, seeds in by_profile.items():
        r = list(seeds.values())
        walls = [x["wall_s"] / 60 for x in rows if x["profile"] == profile]  # every run: the CPU's load varied
        col = lambda key: mean_std([x[key] for x in r])  # noqa: E731
        lines.append(f"| {profile} | {','.join(map(str, sorted(seeds)))} | {col('val_macro_f1')} | "
                     f"{col('test_macro_f1')} | {col('test_neutral_f1')} | {col('test_ece')} | "
                     f"{min(walls):.1f} / {statistics.mean(walls):.1f} | {max(x['peak_mib'] for x in r) / 1024:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path, nargs="?")
    parser.add_argument("--profile", action="append", choices=sorted(PROFILES), default=[])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--resume", action="store_true", help="skip (profile, seed) pairs already in the results")
    parser.add_argument("--table", action="store_true", help="only print the table of the results file")
    args = parser.parse_args()
    if not args.table:
        if args.repo is None:
            sys.exit("bench/encoder.py: give the clone to run in (REPO), or --table")
        for profile in args.profile:
            for seed in args.seeds:
                rows = load()
                if args.resume and any(r["profile"] == profile and r["seed"] == seed for r in rows):
                    continue
                row = run_pipeline(args.repo.resolve(), profile, seed)
                save([*load(), row])
                print(json.dumps(row))
    print(table(load()))


if __name__ == "__main__":
    main()

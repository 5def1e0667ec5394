"""Choose defaults on validation only: Monte Carlo cross-validation through the stages themselves.

`seed` also draws the train/validation split (prepare), so each seed is a different split
of the training data, and the official test split is never read. For every candidate
(a set of params overrides) and seed, the stages run as `python -m stages.<name>` in a
scratch copy of the pipeline (PIPELINE_ROOT), and the kept model's validation macro-F1
and cross-entropy are collected into a mean ± std table over seeds.

The splits overlap (all are drawn from the same training reviews), so the paired column's error
is the Nadeau-Bengio corrected standard error (bench/stats.py) with the sizes of one split's
train and validation parts, which every run records; the plain SE would understate it.

Two phases, so the slow part can run where a GPU is:
    python bench/choose.py splits --seeds 42 43 44 45 46 47 48 49   # prepare + augment per seed (CPU,
                                                                     # translations cached) -> .cache/choose/splits.tar.xz
    python bench/choose.py run --jobs 4 --set model.name=models/base/minilm \\
        default: gamma0:loss.gamma=0 g0-headtail:loss.gamma=0,model.truncation=head_tail
Runs tokenizer, alpha, train per candidate x seed (`--jobs` at a time: only on a GPU; on a
2-core CPU keep 1) and prints the table; the runs land in .cache/choose/results.json and the
table in bench/results/choose.{json,md} (date, commit, command, device, every run).
    python bench/choose.py table [LOG ...] [--save]   # the table again; --save rewrites bench/results/choose.*
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.record import git  # noqa: E402
from bench.stats import paired as paired_stats  # noqa: E402
from stages.common import ROOT, read_json, read_params, workspace_root, write_json, write_text  # noqa: E402
from tools.grid import cell, mean_std  # noqa: E402

WORK = ROOT / ".cache/choose"
RESULTS = ROOT / "bench/results/choose.json"
COLUMNS = ("val_macro_f1", "val_ce_loss", "val_accuracy", "epochs_run")
SPLIT_STAGES = ("prepare", "augment")  # depend on seed and data only: shared by every candidate
RUN_STAGES = ("tokenizer", "pretrain", "alpha", "train")  # never evaluate: test is not looked at


def with_overrides(params: dict, overrides: dict[str, object]) -> dict:
    """A copy of params.yaml's mapping with dotted keys set (`loss.gamma` -> params["loss"]["gamma"])."""
    out = json.loads(json.dumps(params))
    for dotted, value in overrides.items():
        *path, last = dotted.split(".")
        node = out
        for key in path:
            node = node[key]
        if last not in node:
            raise KeyError(f"{dotted}: no such key in params.yaml")
        node[last] = value
    return out


def parse_sets(text: str) -> dict[str, object]:
    """`a.b=1,c=head` -> {"a.b": 1, "c": "head"} (values parsed as YAML, like `dvc exp run -S`)."""
    pairs = [p.split("=", 1) for p in text.split(",") if p]
    return {k: yaml.safe_load(v) for k, v in pairs}


def make_root(root: Path, params: dict) -> Path:
    """A scratch pipeline root: params.yaml, and links to the user's data/raw and models/base."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for shared in ("data/raw", "models/base"):
        if (ROOT / shared).exists() and not (root / shared).exists():
            (root / shared).parent.mkdir(parents=True, exist_ok=True)
            (root / shared).symlink_to(ROOT / shared)
    return root


def run_stages(root: Path, stages: tuple[str, ...], threads: int | None = None) -> None:
    env = {**os.environ, "PIPELINE_ROOT": str(root)}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    for stage in stages:
        with open(root / f"{stage}.log", "w") as log:
            done = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
        if done.returncode:
            raise RuntimeError(f"{stage} failed in {root}: see {root / f'{stage}.log'}")


def splits(seeds: list[int]) -> Path:
    """prepare + augment for each seed; the translation cache is the repository's."""
    archive = WORK / "splits.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        for seed in seeds:
            root = make_root(WORK / f"split-s{seed}", with_overrides(read_params(), {"seed": seed}))
            cache = root / ".cache/augment"
            if not cache.exists():
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.symlink_to(workspace_root() / ".cache/augment")
            run_stages(root, SPLIT_STAGES)
            for part in ("data/prepare", "data/augment"):
                tar.add(root / part, arcname=f"s{seed}/{part}")
            print(f"split s{seed}: {read_json(root / 'metrics/prepare.json')['val']}", flush=True)
    return archive


def line_count(path: Path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"


def run_one(name: str, overrides: dict, seed: int, threads: int | None, where: str) -> dict:
    root = make_root(WORK / f"{name}-s{seed}", with_overrides(read_params(), {**overrides, "seed": seed}))
    for part in ("data/prepare", "data/augment"):
        shutil.rmtree(root / part, ignore_errors=True)
        shutil.copytree(WORK / "splits" / f"s{seed}" / part, root / part)
    run_stages(root, RUN_STAGES, threads)
    metrics = read_json(root / "metrics/train.json")
    # the held-out rows' scores: validation for one fit, out-of-fold over train + val with train.folds > 1
    held, fits = metrics["heldout"], list(metrics["folds"].values()) if "folds" in metrics else [metrics]
    result = {"candidate": name, "seed": seed, "val_macro_f1": held["macro_f1"], "val_ce_loss": held["ce_loss"],
              "val_accuracy": held["accuracy"], "heldout": held["what"], "heldout_rows": held["rows"],
              "epochs_run": max(f["epochs_run"] for f in fits), "kept": [f["kept"] for f in fits],
              # reviews in this split's parts (before back-translation): the corrected SE needs them
              "n_train": line_count(root / "data/prepare/train.jsonl"),
              "n_val": line_count(root / "data/prepare/val.jsonl"), "device": where}
    print(json.dumps(result), flush=True)  # one line per run: a cut-off batch keeps what finished
    return result


def run(candidates: dict[str, dict], common_sets: dict, jobs: int) -> list[dict]:
    with tarfile.open(WORK / "splits.tar.xz") as tar:
        tar.extractall(WORK / "splits", filter="data")
    seeds = sorted(int(p.name[1:]) for p in (WORK / "splits").iterdir())
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    tasks = [(name, {**common_sets, **sets}, seed) for seed in seeds for name, sets in candidates.items()]
    where = device()
    with ThreadPoolExecutor(jobs) as pool:
        results = list(pool.map(lambda t: run_one(*t, threads, where), tasks))
    (WORK / "results.json").write_text(json.dumps(results, indent=2))
    return results


def latest_per_seed(results: list[dict]) -> list[dict]:
    """One result per (candidate, seed), the last one met: merged logs or a rerun must not count a split twice."""
    return list({(r["candidate"], r["seed"]): r for r in results}.values())


def split_sizes(results: list[dict]) -> tuple[int, int] | None:
    """(train, validation) reviews of one split, the same for every seed; None when a run did not record them."""
    sizes = {(r.get("n_train"), r.get("n_val")) for r in results}
    if not sizes or any(None in pair for pair in sizes):
        return None
    if len(sizes) > 1:
        raise ValueError(f"the runs come from splits of different sizes {sorted(sizes)}: "
                         "were they made from different data? compare runs of one `splits` call")
    return sizes.pop()


def paired(results: list[dict], name: str, baseline: str, key: str = "val_macro_f1") -> dict | None:
    """bench/stats.paired of the per-split differences `name` minus `baseline`, over the seeds both ran:
    the splits vary far more than the candidates do. None for the baseline itself or under 2 shared splits."""
    results = latest_per_seed(results)
    base = {r["seed"]: r[key] for r in results if r["candidate"] == baseline}
    diffs = [r[key] - base[r["seed"]] for r in results if r["candidate"] == name and r["seed"] in base]
    if name == baseline or len(diffs) < 2:
        return None
    n_train, n_test = split_sizes(results) or (None, None)
    return paired_stats(diffs, n_train, n_test)


def fmt_paired(stat: dict | None) -> str:
    """"+0.013 ± 0.015 (2/3)": mean difference ± corrected SE (better on 2 of 3 splits)."""
    return f"{stat['mean']:+.3f} ± {stat['se_corrected']:.3f} ({stat['better']}/{stat['n']})" if stat else "—"


def table(results: list[dict], baseline: str | None = None) -> str:
    """Mean ± std over splits per candidate; paired differences against `baseline` (default: the first)."""
    results = latest_per_seed(results)
    names = list(dict.fromkeys(r["candidate"] for r in results))
    baseline = baseline or names[0]
    se = "corrected SE" if split_sizes(results) else "plain SE: the runs did not record their split sizes"
    lines = [f"| candidate | seeds | val macro-F1 | val CE loss | val accuracy | epochs | paired vs {baseline} "
             f"(± {se}) |", "|---|---|---|---|---|---|---|"]
    for name in names:
        rows = [r for r in results if r["candidate"] == name]
        lines.append(f"| {name} | {len({r['seed'] for r in rows})} | "
                     + " | ".join(cell([r[k] for r in rows]) for k in COLUMNS)
                     + f" | {fmt_paired(paired(results, name, baseline))} |")
    return "\n".join(lines) + "\n"


def summary(results: list[dict], baseline: str | None, command: str) -> dict:
    """What bench/results/choose.json holds: per candidate mean/std over distinct seeds, the paired
    comparison (plain and corrected SE), and every run."""
    results = latest_per_seed(results)
    names = list(dict.fromkeys(r["candidate"] for r in results))
    baseline = baseline or names[0]
    n_train, n_val = split_sizes(results) or (None, None)
    candidates = []
    for name in names:
        rows = [r for r in results if r["candidate"] == name]
        spread = {k: dict(zip(("mean", "std"), mean_std([r[k] for r in rows])), values=[r[k] for r in rows])
                  for k in COLUMNS}
        candidates.append({"name": name, "seeds": sorted(r["seed"] for r in rows), **spread,
                           "vs_baseline": paired(results, name, baseline)})
    return {"date": time.strftime("%Y-%m-%d"), "commit": git("rev-parse", "HEAD", check=True), "command": command,
            "device": ", ".join(sorted({r.get("device", "not recorded") for r in results})),
            "baseline": baseline, "n_train": n_train, "n_val": n_val,
            "seeds": sorted({r["seed"] for r in results}), "candidates": candidates, "runs": results}


def save(results: list[dict], baseline: str | None, command: str, path: Path = RESULTS) -> str:
    """bench/results/choose.json and its table beside it as .md; returns the table."""
    res, md = summary(results, baseline, command), table(results, baseline)
    write_json(path, res)
    write_text(path.with_suffix(".md"), f"<!-- written by bench/choose.py ({res['date']}, commit {res['commit'][:7]}, "
                                        f"{res['device']}): {command} -->\n{md}")
    return md


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("splits")
    s.add_argument("--seeds", type=int, nargs="+", required=True)
    r = sub.add_parser("run")
    r.add_argument("candidates", nargs="+", help="name:key=value,key=value (name: alone = params.yaml)")
    r.add_argument("--set", default="", help="overrides for every candidate, e.g. model.name=models/base/x")
    r.add_argument("--jobs", type=int, default=1)
    t = sub.add_parser("table", help="the table again, from results.json or lines of a run's output")
    t.add_argument("log", nargs="*", type=Path, help="run outputs (lines of JSON results); several are merged")
    t.add_argument("--baseline", help="candidate the paired column compares with (default: the first)")
    t.add_argument("--save", action="store_true", help="also write bench/results/choose.{json,md}")
    args = parser.parse_args()
    command = " ".join(["python bench/choose.py", *sys.argv[1:]])
    WORK.mkdir(parents=True, exist_ok=True)
    if args.command == "splits":
        print(splits(args.seeds))
    elif args.command == "run":
        candidates = {c.split(":", 1)[0]: parse_sets(c.split(":", 1)[1]) for c in args.candidates}
        print(save(run(candidates, parse_sets(args.set), args.jobs), None, command), end="")
    else:
        if args.log:
            lines = [line for path in args.log for line in path.read_text().splitlines()]
            results = [json.loads(line) for line in lines if line.startswith('{"candidate"')]
        else:
            results = json.loads((WORK / "results.json").read_text())
        print(save(results, args.baseline, command) if args.save else table(results, args.baseline), end="")


if __name__ == "__main__":
    main()

"""Pipeline profiles over seeds: quality, `dvc repro` wall time and peak memory, from pipeline runs.

Profiles: the encoders (issue Encoder; bench/results/encoder.json) and the cross-fitting and
stopping rules (issue Cross-fit; `--results crossfit`: bench/results/crossfit.json).

Each (profile, seed) is one `dvc exp run --force` (every stage re-runs, none restored from the run
cache) in REPO, a clone of this repository; the run is timed from outside and its peak resident
memory is the largest process's (the train or evaluate stage). Rows are appended to
bench/results/encoder.json as each run ends, so a long queue can stop and resume (`--resume`
skips pairs already there). The translation cache (.cache/augment) of REPO is kept between runs:
the first run of a clone pays the back-translation, later ones mostly hit the cache; `fresh`
in a row says which it was.

Run: python bench/encoder.py REPO --profile mpnet-freeze10-short --seeds 42 43 44 [--resume]
     python bench/encoder.py REPO --results crossfit --profile folds3 --seeds 42 43 44
     python bench/encoder.py REPO --results bbcnews --profile bbcnews --profile bbcnews-minilm
     python bench/encoder.py [--results crossfit] --table   # the markdown table of a results file
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.profile_tables import table  # noqa: E402

RESULTS_DIR = ROOT / "bench/results"
# The defaults are mpnet with 8 frozen layers under this short schedule (params.yaml). Every profile that is
# not "the defaults plus one change" pins what it needs, so it re-runs as recorded whatever params.yaml says.
# Profiles measured before train.temperature_scaling existed pin it off, and those measured while back-translation
# was on by default (before 2026-12-07) pin it on, so they re-run as recorded. Every profile but `default` ran
# before train.sub_batches existed (each padded batch whole): `padded` below pins that on all of them (CURRENT:
# the profiles measured with today's code). Every profile but `default` and `bbcnews` ran while long texts kept
# only their beginning (model.truncation: head, the default until 2026-12-07): HEAD is pinned on them unless
# they set the truncation themselves (HEAD_TAIL: the profiles measured with head_tail as the default).
NO_T = "train.temperature_scaling=false"
BT = "augment.enabled=true"
PADDED = "train.sub_batches=1"
HEAD = "model.truncation=head"
SHORT = ["model.name=bundled-mpnet", "train.learning_rate=1e-4", "train.max_epochs=6", "train.swa.start_epoch=3",
         "train.patience_from=first_epoch", NO_T, BT]
# the schedule of the defaults before (MiniLM's, chosen by bench/choose.py), with every layer trained
OLD_SCHEDULE = ["model.freeze_layers=0", "train.learning_rate=5e-5", "train.max_epochs=10", "train.swa.start_epoch=4"]
MINILM = ["model.name=bundled-minilm", *OLD_SCHEDULE, "train.patience_from=swa_start", NO_T, BT]  # the defaults before


def on(base: list[str], *changes: str) -> list[str]:
    """`base` with `changes` applied, one `-S` per key (a key given twice is not left to DVC to resolve)."""
    sets = {s.split("=", 1)[0]: s for s in base}
    sets.update({s.split("=", 1)[0]: s for s in changes})
    return list(sets.values())


# today's defaults under 3 folds, padded whole (folds3-head-tail), and the out-of-fold candidates paired with it
FOLDS3_HEAD_TAIL = ["train.folds=3", "augment.enabled=false", NO_T, "model.truncation=head_tail"]


# name -> `-S` overrides on top of the committed params.yaml (the ones a user would pass)
PROFILES = {
    "minilm": MINILM,
    "minilm-freeze4": on(MINILM, "model.freeze_layers=4"),
    # batches of similar lengths: less padding per step, other batches (so other results)
    "minilm-grouped": on(MINILM, "train.group_by_length=true"),
    # full fine-tuning under the stopping rule the freeze rows below ran under (they predate
    # train.patience_from), so the two pair up; each mpnet epoch costs ~5 min on 2 cores
    "mpnet-first-epoch": ["model.name=bundled-mpnet", *OLD_SCHEDULE, "train.patience_from=first_epoch", NO_T, BT],
    # the top layer alone learns slower per step than the whole encoder, and each epoch is cheap: a higher
    # LR, and a shorter run (full fine-tuning of mpnet bottomed out in val loss at epoch 3 of 6). Under the
    # stopping rule its rows ran under (they predate train.patience_from), so that they re-run as recorded.
    "mpnet-freeze11-short": on(SHORT, "model.freeze_layers=11"),
    # the same schedule with the top two layers trained: the freezing level is the only change
    "mpnet-freeze10-short": on(SHORT, "model.freeze_layers=10"),
    "mpnet-freeze8-short": on(SHORT, "model.freeze_layers=8"),  # = the defaults until 2026-12-07
    # the short schedule as a lever: the same freezing and stopping rule under the old schedule
    "mpnet-freeze8": on(["model.name=bundled-mpnet", *OLD_SCHEDULE, NO_T, BT], "model.freeze_layers=8",
                        "train.patience_from=first_epoch"),
    # Cross-fit (`--results crossfit`): the defaults, patience counted from swa.start_epoch, K fold models
    # over train + val, the refit on train + val, the ordinal head; and the same on the MiniLM defaults before.
    "default": [],
    # the defaults before model.truncation: head_tail (these rows ran as `--profile default` at 0874d38): a long
    # review keeps its first 128 word pieces; paired with `default`, the truncation the one change
    "head": [HEAD],
    # the defaults before back-translation went off (these rows ran as `--profile default` at d73d109), and the
    # defaults with temperature scaling (these ran as `--profile default` at e9ae373, when it was on)
    "backtrans": [BT, "train.temperature_scaling=true"],
    "temperature": ["train.temperature_scaling=true"],
    # the defaults before train.sub_batches (these rows ran as `--profile default` at 6ca0d8f): the same batches and
    # math, each batch padded whole, so other dropout draws and more padding to compute
    "padded": [],
    "patience-swa-start": ["train.patience_from=swa_start", BT],
    # K > 1 without the temperature (params.yaml: T fitted on single fold models over-softens their average)
    "folds3": ["train.folds=3", NO_T, BT],
    "folds5": ["train.folds=5", NO_T, BT],
    # ... and with it: these rows ran as `--profile folds3` at 6e375ba, when folds3 meant this (their command)
    "folds3-temperature": ["train.folds=3", "train.temperature_scaling=true", BT],
    # SWA as the out-of-fold signal sees it: the ablation's no-swa row scored higher on test and on
    # validation (90 reviews), which is too few to choose with; paired with folds3 on the same folds
    "folds3-noswa": ["train.folds=3", "train.swa.enabled=false", NO_T, BT],
    # back-translation likewise: the ablation's no-backtrans row scored higher on test and validation (90);
    # augment's reviews keep their order with it off, so the folds (and held-out rows) are folds3's
    "folds3-nobacktrans": ["train.folds=3", "augment.enabled=false", NO_T],
    # head_tail truncation (the defaults' since 2026-12-07) on the out-of-fold signal: folds3-nobacktrans's folds and
    # batches (padded whole, like those rows), so paired with it; the truncation is the one change
    "folds3-head-tail": FOLDS3_HEAD_TAIL,
    # what the ablation of 2026-12-08 showed on test (so not blind to it): the defaults without the extended
    # tokenizer, or without label smoothing, scored as high or higher with a lower ECE, while 90 validation reviews
    # tied; on the out-of-fold signal, each paired with folds3-head-tail (the same folds and batches). Run on
    # 2026-12-08: neither met the rule (out-of-fold macro-F1 >= and CE <=), so neither became the default
    "folds3-no-tokenizer": on(FOLDS3_HEAD_TAIL, "tokenizer.max_new_tokens=0"),
    "folds3-no-smoothing": on(FOLDS3_HEAD_TAIL, "loss.label_smoothing=0"),
    "refit": ["train.refit=true", BT],
    "ordinal": ["loss.ordinal=[negative,neutral,positive]", BT],
    "minilm-folds3": on(MINILM, "train.folds=3"),
    "minilm-refit": on(MINILM, "train.refit=true"),
    "minilm-ordinal": on(MINILM, "loss.ordinal=[negative,neutral,positive]"),
    # users' own data must not get worse (`--results bbcnews`): the bundled 5-class BBC News corpus under the
    # defaults, and under the MiniLM defaults before (and those with patience from epoch 1, before Cross-fit).
    # No BBC class is below augment.target_ratio x the largest (386 of 511), so back-translation adds nothing there.
    "bbcnews": ["data.source=bbcnews"],
    # the same before model.truncation: head_tail (these rows ran as `--profile bbcnews` at e7a56bf)
    "bbcnews-head": ["data.source=bbcnews", HEAD],
    # the same before train.sub_batches (these rows ran as `--profile bbcnews` at c70bcaa)
    "bbcnews-padded": ["data.source=bbcnews"],
    "bbcnews-minilm": on(MINILM, "data.source=bbcnews"),
    "bbcnews-minilm-first-epoch": on(MINILM, "data.source=bbcnews", "train.patience_from=first_epoch"),
}
CURRENT = ("default", "head", "bbcnews", "bbcnews-head")
HEAD_TAIL = ("default", "bbcnews")
# (a default as it was before it changed, the profiles measured since): every other profile gets the old value,
# unless it sets that key itself
OLD_DEFAULTS = ((PADDED, CURRENT), (HEAD, HEAD_TAIL))
PROFILES = {name: on([old for old, since in OLD_DEFAULTS if name not in since], *sets)
            for name, sets in PROFILES.items()}


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
    fits = list(train["folds"].values()) if "folds" in train else [train]
    runtime = {p.stem: json.loads(p.read_text()) for p in (repo / ".cache/runtime").glob("*.json")}
    times = [json.loads(p.read_text()) | {"stage": p.stem} for p in (repo / ".cache/runtime/times").glob("*.json")]
    model = json.loads((repo / "models/train/pipeline.json").read_text())["model"]  # what the run really used
    sizes = json.loads((repo / "metrics/prepare.json").read_text())["totals"]
    return {
        "profile": profile, "seed": seed, "overrides": sets, "commit": git(repo, "rev-parse", "HEAD"),
        "date": datetime.date.today().isoformat(), "command": " ".join(cmd), "device": platform.processor() or "cpu",
        "model": model, "fresh_translation_cache": fresh, "wall_s": round(wall, 1), "peak_mib": round(peak_mib),
        "train_wall_s": runtime.get("train", {}).get("wall_time_s"),
        "stage_s": {t["stage"]: round(t["ended"] - t["started"], 1) for t in times if t["started"] >= start_epoch},
        # the held-out rows' scores: validation (90 reviews on the drug reviews) or out-of-fold (all ~600)
        "heldout": train["heldout"]["what"], "heldout_rows": train["heldout"]["rows"],
        "n_train": sizes["train"], "n_val": sizes["val"],  # one split's sizes: the corrected SE's ratio
        "val_macro_f1": train["heldout"]["macro_f1"], "val_ce_loss": train["heldout"]["ce_loss"],
        "epochs_run": [f["epochs_run"] for f in fits], "best_epoch": [f["best"]["epoch"] for f in fits],
        "kept": [f["kept"] for f in fits], "snapshots": [(f["swa"] or {}).get("snapshots", 0) for f in fits],
        "test_macro_f1": test["macro_f1"], "test_accuracy": test["accuracy"],
        "test_bias_tuned_macro_f1": test["bias_tuned"]["macro_f1"],
        "test_neutral_f1": test["per_class"].get("neutral", {}).get("f1"), "test_ece": test["ece"],  # None: no neutral class
        **calibration_fields(test),
    }


def calibration_fields(test: dict) -> dict:
    """train.temperature_scaling as evaluate reports it (runs before it record none): the temperature, the
    held-out rows' CE and ECE unscaled vs scaled by a T fitted on the other parts, and the test ECE without T."""
    if "calibration" not in test:
        return {}
    c = test["calibration"]
    return {"temperature": c["temperature"], "heldout_calibration": c["heldout_cross_validated"],
            "test_ece_unscaled": c["ece_unscaled"], "test_ce_loss": test["ce_loss"],
            "test_ce_loss_unscaled": c["ce_loss_unscaled"]}


def load(results: Path) -> list[dict]:
    return json.loads(results.read_text()) if results.exists() else []


# What the "Δ test macro-F1 vs default" column of a results file pairs with: the default params on its data.
BASELINE = {"bbcnews": "bbcnews"}

# Per results file, profiles whose rows another results file holds, shown under an alias. The encoder table's
# MiniLM defaults are crossfit.json's `minilm` rows; the cross-fit table's `backtrans` (the defaults before
# back-translation went off) are encoder.json's `mpnet-freeze8-short` rows (the same params but the
# temperature), where crossfit.json has none of its own for a seed. A file's own row for a seed wins over a
# borrowed one (the last run counts).
BORROWED = {"encoder": {"minilm": ("crossfit", "minilm")},
            "crossfit": {"backtrans": ("encoder", "mpnet-freeze8-short")}}


def with_borrowed(rows: list[dict], results: Path) -> list[dict]:
    """The rows of a table: the BORROWED profiles' rows (renamed to their alias), then the file's own."""
    borrowed = [r | {"profile": alias} for alias, (name, profile) in BORROWED.get(results.stem, {}).items()
                for r in load(results.with_name(f"{name}.json")) if r["profile"] == profile]
    return [*borrowed, *rows]


def results_table(rows: list[dict], results: Path) -> str:
    """The table of a results file: the encoder table (with the BORROWED rows) or the cross-fit table,
    paired with that file's BASELINE."""
    return table(with_borrowed(rows, results), results.stem != "encoder", BASELINE.get(results.stem, "default"))


def save(rows: list[dict], results: Path) -> None:
    """The rows, and their table as markdown beside them (what README.md and BENCHMARKS.md quote)."""
    results.parent.mkdir(parents=True, exist_ok=True)
    shown = with_borrowed(rows, results)
    borrowed = "".join(f"; {alias}: the {profile} rows of {name}.json"
                       for alias, (name, profile) in BORROWED.get(results.stem, {}).items())
    md = (f"<!-- written by bench/encoder.py from {results.name}; commits "
          f"{', '.join(sorted({r['commit'][:7] for r in shown}))}{borrowed} -->\n"
          f"{results_table(rows, results)}\n")
    for path, text in ((results, json.dumps(rows, indent=2) + "\n"), (results.with_suffix(".md"), md)):
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path, nargs="?")
    parser.add_argument("--profile", action="append", choices=sorted(PROFILES), default=[])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--resume", action="store_true", help="skip (profile, seed) pairs already in the results")
    parser.add_argument("--table", action="store_true", help="only print the table of the results file")
    parser.add_argument("--results", default="encoder", help="bench/results/NAME.json (default: encoder)")
    args = parser.parse_args()
    results = RESULTS_DIR / f"{args.results}.json"
    if not args.table:
        if args.repo is None:
            sys.exit("bench/encoder.py: give the clone to run in (REPO), or --table")
        for profile in args.profile:
            for seed in args.seeds:
                rows = load(results)
                if args.resume and any(r["profile"] == profile and r["seed"] == seed for r in rows):
                    continue
                row = run_pipeline(args.repo.resolve(), profile, seed)
                save([*load(results), row], results)
                print(json.dumps(row))
    print(results_table(load(results), results))


if __name__ == "__main__":
    main()

"""What each stage of the committed default run produced, as a results file, from its metrics/*.json.

Reads metrics/{prepare,tokenizer,pretrain,augment,alpha,train,evaluate}.json and params.yaml as
committed at a revision (default HEAD: `git show`, so a run in progress in the workspace does not
leak in) and writes them to bench/results/default_run.json, and one line per stage to
bench/results/default_run.md, the table BENCHMARKS.md ("Default pipeline") quotes. Wall times
are not in metrics/*.json (they go to .cache/runtime and MLflow), so they are not here. Re-run
it in the commit that changes the committed metrics (tests/test_default_run.py checks).

Run: python bench/default_run.py [--rev HEAD]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.record import git  # noqa: E402
from stages.common import ROOT, write_json, write_text  # noqa: E402

RESULTS = ROOT / "bench/results/default_run.json"
STAGES = ("prepare", "tokenizer", "pretrain", "augment", "alpha", "train", "evaluate")


def committed(rev: str) -> tuple[dict, dict]:
    """(stage -> its metrics file, params.yaml) as committed at `rev`."""
    metrics = {stage: json.loads(git("show", f"{rev}:metrics/{stage}.json", check=True)) for stage in STAGES}
    return metrics, yaml.safe_load(git("show", f"{rev}:params.yaml", check=True))


def rows(m: dict, params: dict) -> list[tuple[str, str]]:
    """(stage, what it produced) for each stage, in pipeline order."""
    prep, tok, aug, alpha, train, test = (m[s] for s in ("prepare", "tokenizer", "augment", "alpha", "train",
                                                          "evaluate"))
    n = prep["totals"]
    kept = train["swa"] if train["kept"] == "swa" else train["best"]
    return [
        ("prepare", f"{n['train']} train / {n['val']} val / {n['test']} test reviews; "
                    f"{prep['dropped']['cross_split_leaks']} train review(s) dropped as also in test"),
        ("tokenizer", f"{tok['tokens_added']} domain words added ({tok['mode']}; vocab {tok['vocab_size']:,})"),
        ("pretrain", "on" if m["pretrain"].get("enabled") else "off (records only that)"),
        ("augment", augment_line(aug, params.get("augment", {}).get("enabled", True))),
        ("alpha", f"{alpha['method']}: " + " / ".join(f"{c} {v['alpha']:.3f}" for c, v in alpha["per_class"].items())),
        ("train", f"{train['epochs_run']} of at most {params['train']['max_epochs']} epochs "
                  f"({train['stop_reason'].replace('_', ' ')}); lowest val loss at epoch {train['best']['epoch']}; "
                  + (f"SWA over {train['swa']['snapshots']} epochs; " if (train["swa"] or {}).get("snapshots") else "")
                  + f"kept {train['kept']}: val macro-F1 {kept['val_macro_f1']:.3f} (epoch-{train['best']['epoch']} "
                  f"checkpoint {train['best']['val_macro_f1']:.3f})"),
        ("evaluate", f"{test['n_test']} test reviews: accuracy {test['accuracy']:.3f}, macro-F1 {test['macro_f1']:.3f}, "
                     f"neutral F1 {test['per_class']['neutral']['f1']:.3f}, ECE {test['ece']:.3f}"
                     + scaled(test.get("calibration"))),
    ]


def augment_line(aug: dict, enabled: bool) -> str:
    """What augment added (the classes it grew), or, with it off, the class counts train gets unchanged."""
    if not enabled:
        return "off (train unchanged: " + " / ".join(f"{c} {v['before']}" for c, v in aug["classes"].items()) + ")"
    return f"{aug['generated']} back-translations, {aug['kept']} kept; " + ", ".join(
        f"{c} {v['before']} -> {v['after']}" for c, v in aug["classes"].items() if v["after"] != v["before"])


def scaled(calibration: dict | None) -> str:
    """What train.temperature_scaling changed (runs before it, or with it off, say nothing)."""
    if not calibration or calibration["temperature"] == 1.0:
        return ""
    return f" (temperature {calibration['temperature']:.2f}; {calibration['ece_unscaled']:.3f} unscaled)"


def table(lines: list[tuple[str, str]]) -> str:
    return "| stage | what the committed run produced |\n|---|---|\n" + "".join(f"| {s} | {t} |\n" for s, t in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="HEAD", help="revision whose committed metrics to read")
    rev = parser.parse_args().rev
    commit = git("rev-parse", rev, check=True)
    metrics, params = committed(commit)
    lines = rows(metrics, params)
    res = {"date": time.strftime("%Y-%m-%d"), "commit": commit, "device": "not in metrics/*.json",
           "command": " ".join(["python bench/default_run.py", *sys.argv[1:]]),
           "max_epochs": params["train"]["max_epochs"], "metrics": metrics}  # the numbers behind every line
    write_json(RESULTS, res)
    md = table(lines)
    write_text(RESULTS.with_suffix(".md"), f"<!-- written by bench/default_run.py from metrics/*.json at "
                                           f"{commit[:7]} ({res['date']}) -->\n{md}")
    print(md, end="")


if __name__ == "__main__":
    main()

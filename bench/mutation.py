"""Mutation score of the loss, alpha, SWA and metric code: mutmut's mutants, counted per module.

mutmut (settings: pyproject.toml [tool.mutmut]) copies stages/ into mutants/, makes many small edits
("mutants") of each function of the modules in SELECTION, and runs against each mutant the fast tests
that reach that function (tests/test_focal_loss.py, test_alpha.py, test_calibration.py, test_evaluate.py,
test_swa.py and the SWA tests of test_train.py). A mutant is killed when a test fails or times out, and survives when
every test passes. Counted: every function of those modules except the CLI `main()` (it reads the
repo's params.yaml), and only the metric functions of evaluate.py (its run(), image and CSV writers
are I/O, checked by the stage's run() test). One worker by default: the CPU is shared.

Writes bench/results/mutation.json (per-module counts, survivors, date, commit, command, CPU; the entry
of the other --label is kept) and bench/results/mutation.md (the table, and each survivor with its diff
and the reason it is equivalent, from EQUIVALENT below). Exits 1 when a survivor has no reason there.

Run: python bench/mutation.py [--label after|before] [--max-children 1]     (`make mutate`)
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import record  # noqa: E402

ROOT = record.ROOT
# module -> the functions whose mutants count (None: all but main)
SELECTION = {
    "stages/focal_loss.py": None,
    "stages/swa.py": None,
    "stages/alpha.py": None,
    "stages/metrics.py": None,
    "stages/calibration.py": None,
    "stages/evaluate.py": ("classification_metrics", "biased_argmax", "macro_f1_with_bias", "tune_bias",
                           "bias_tuned_metrics"),
}
KILLED = {"killed", "timeout", "caught by type check"}
# (function, the mutated line as mutmut writes it) -> why no test can tell the mutant from the code
_SAME_DEVICE = ("on one device the default device is the logits' device: these tests run on the CPU; "
                "tests/test_focal_loss.py::test_alpha_on_the_cpu_weights_cuda_logits kills it where a GPU is")
_MOVED_NEXT_LINE = "the next line moves alpha to the logits' device whatever device the ones are made on"
_NO_WEIGHT = ("weighted F1 weights each class by its support: a class absent from the labels weighs 0 and its "
              "F1 (the only one zero_division or the label list can change) drops out; y is never empty")
EQUIVALENT: dict[tuple[str, str], str] = {
    ("focal_loss", "alpha = torch.ones(logits.shape[-1], device=None)"): _MOVED_NEXT_LINE,
    ("focal_loss", "alpha = torch.ones(logits.shape[-1], )"): _MOVED_NEXT_LINE,
    ("focal_loss", "weights = alpha.to(device=None, dtype=torch.float32)[labels]"): _SAME_DEVICE,
    ("focal_loss", "weights = alpha.to(dtype=torch.float32)[labels]"): _SAME_DEVICE,
    ("modulating_factor", "if 0 <= gamma < 1:"):
        "at gamma 0 both branches give x^0 = 1 exactly (and gradient 0): the smoothed base is >= 1e-6 > 0",
    ("build_lr_scheduler", "if not swa.enabled or swa_start_step > total_steps:"):
        "at swa_start_step == total_steps the SWA scheduler would start after the last step: every LR of the "
        "run is the same (tests/test_swa.py, starts-after-last-step: step 40 of 40)",
    ("build_lr_scheduler", "swalr = SWALR(optimizer, swa_lr=swa.lr, anneal_epochs=steps_per_epoch, )"):
        "anneal_strategy='cos' is SWALR's default",
    ("compute_alpha", "raw = [(1.0 + beta) / (1.0 - beta**n) for n in counts]"):
        "the numerator is one constant for every class and cancels in the normalisation to sum 1",
    ("compute_alpha", "raw = [(2.0 - beta) / (1.0 - beta**n) for n in counts]"):
        "the numerator is one constant for every class and cancels in the normalisation to sum 1",
    ("calibration_bins", "which = np.searchsorted(edges[1:-1], confidence, )"): "side='left' is numpy's default",
    ("classification_metrics", '"weighted_f1": float(f1_score(y, pred, labels=None, average="weighted", '
                               'zero_division=0)),'): _NO_WEIGHT,
    ("classification_metrics", '"weighted_f1": float(f1_score(y, pred, average="weighted", zero_division=0)),'):
        _NO_WEIGHT,
    ("classification_metrics", '"weighted_f1": float(f1_score(y, pred, labels=classes, average="weighted", '
                               'zero_division=1)),'): _NO_WEIGHT,
    ("tune_bias", "grid = sorted(np.round(np.arange(-half_width, half_width + step / 3, step), 6), key=abs)"):
        "the same grid for the configured half_width (2.0) and any multiple of step / 2; it differs only when "
        "2 * half_width / step has a fractional part in (1/2, 2/3], and there the code is the one that breaks "
        "its docstring's [-half_width, half_width] (0.13 -> grid up to 0.17): a bug of the code, not a test gap",
    ("tune_bias", "grid = sorted(np.round(np.arange(-half_width, half_width + step / 2, step), 7), key=abs)"):
        "the rounding only removes arange's ~1e-16 noise: 6 or 7 decimals give the same grid for any "
        "half_width with at most 6 decimals",
    ("tune_bias", "while changed and half_width >= 0:"):
        "at half_width 0 the grid is [0]: one pass that changes nothing, then the same zero bias",
    ("tune_bias", "changed = None"): "None is falsy like False: the loop stops the same",
    ("tune_bias", "if (s := macro_f1_with_bias(probs, y, trial)) >= best + 1e-12:"):
        "differs only if a macro-F1 gain equals the float 1e-12 exactly, which ratios of small counts never do",
}


def mutant_globs(path: str, only: tuple[str, ...] | None) -> list[str]:
    """mutmut's names for the mutants of `path`'s functions (methods as xǁClassǁname), as globs."""
    module = path.removesuffix(".py").replace("/", ".")
    names = []
    for node in ast.parse((ROOT / path).read_text()).body:
        if isinstance(node, ast.FunctionDef):
            names.append((node.name, f"x_{node.name}"))
        elif isinstance(node, ast.ClassDef):
            names += [(f.name, f"xǁ{node.name}ǁ{f.name}") for f in node.body if isinstance(f, ast.FunctionDef)]
    return [f"{module}.{mangled}__mutmut_*" for name, mangled in names
            if (name in only if only else name != "main")]


def mutmut(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"`mutmut {' '.join(args[:3])} ...` failed (exit {done.returncode}):\n{done.stdout[-3000:]}"
                         f"{done.stderr[-3000:]}")
    return done.stdout


def statuses(globs: list[str]) -> dict[str, str]:
    """mutant name -> status, for the mutants the globs select."""
    rows = (line.strip().rsplit(": ", 1) for line in mutmut("results", "--all", "true").splitlines() if ": " in line)
    return {name: status for name, status in rows if any(fnmatch.fnmatchcase(name, g) for g in globs)}


def changed_lines(name: str) -> list[str]:
    """The -/+ lines of a mutant's diff."""
    diff = mutmut("show", name).splitlines()
    return [line for line in diff if line[:1] in "-+" and not line.startswith(("---", "+++"))]


def survivor(name: str) -> dict:
    lines = changed_lines(name)
    function = name.split("__mutmut_")[0].split(".")[-1].split("ǁ")[-1].removeprefix("x_")
    mutated = next((line[1:].strip() for line in lines if line.startswith("+")), "")
    return {"name": name, "diff": lines, "reason": EQUIVALENT.get((function, mutated))}


def counts(names: list[str], status: dict[str, str]) -> dict:
    n, killed = len(names), sum(status[m] in KILLED for m in names)
    survived = sum(status[m] == "survived" for m in names)
    return {"mutants": n, "killed": killed, "survived": survived, "other": n - killed - survived,
            "score": round(killed / n, 4) if n else None}


def measure(max_children: int) -> dict:
    """A fresh mutmut run over SELECTION; counts per module and the survivors."""
    shutil.rmtree(ROOT / "mutants", ignore_errors=True)  # no cached verdicts from older tests or code
    globs = {path: mutant_globs(path, only) for path, only in SELECTION.items()}
    start = time.perf_counter()
    mutmut("run", "--max-children", str(max_children), *(g for gs in globs.values() for g in gs))
    seconds = time.perf_counter() - start
    status = statuses([g for gs in globs.values() for g in gs])
    by_module = {path: sorted(m for m in status if any(fnmatch.fnmatchcase(m, g) for g in gs))
                 for path, gs in globs.items()}
    return {
        "modules": {path: counts(names, status) for path, names in by_module.items()},
        "total": counts(list(status), status),
        "survivors": [survivor(m) for m in sorted(status) if status[m] == "survived"],
        "not_killed_or_survived": {m: s for m, s in sorted(status.items()) if s not in KILLED | {"survived"}},
        "seconds": round(seconds, 1),
    }


def markdown(runs: dict) -> str:
    """The per-module table (with the `before` score), then each survivor's diff and why it is equivalent."""
    now, before = runs.get("after") or runs["before"], runs.get("before", {})
    lines = ["mutmut mutants of the loss, alpha, SWA and metric code, each run against the fast tests of those "
             "modules (bench/mutation.py; score = killed / mutants, a timeout counts as killed).", "",
             "| module | mutants | killed | survived | score | score before |", "|---|---|---|---|---|---|"]
    for path, c in {**now["modules"], "all": now["total"]}.items():
        old = before.get("total") if path == "all" else before.get("modules", {}).get(path)
        was = f"{old['score']:.1%}" if old else "-"
        lines.append(f"| {path} | {c['mutants']} | {c['killed']} | {c['survived']} | {c['score']:.1%} | {was} |")
    if before and now is not before:
        lines += ["", f"Before: {before['date']}, commit {before['commit'][:7]}, `{before['command']}`."]
    lines += ["", "## Survivors", ""] + ([] if now["survivors"] else ["None."])
    for s in now["survivors"]:
        lines += [f"- `{s['name']}`: {s['reason'] or '**not argued yet**: add a test, or a reason in EQUIVALENT'}",
                  "", "  ```diff", *(f"  {d}" for d in s["diff"]), "  ```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", choices=["before", "after"], default="after",
                        help="before: the baseline kept in the json for later runs to compare with")
    parser.add_argument("--max-children", type=int, default=1, help="mutmut workers (the CPU is shared)")
    args = parser.parse_args()
    if args.max_children < 1:
        raise SystemExit(f"--max-children must be >= 1, got {args.max_children}")
    meta = record.start()
    tests = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]["pytest_add_cli_args_test_selection"]
    changed = record.git("status", "--porcelain", "--", "pyproject.toml", *{t.split("::")[0] for t in tests})
    run = {**meta, "tests_uncommitted": [line[3:] for line in changed.splitlines()],  # the tests the counts are of
           "mutmut": importlib.metadata.version("mutmut"), **measure(args.max_children),
           "load_after": list(os.getloadavg())}
    path = record.RESULTS / "mutation.json"
    runs = {k: v for k, v in json.loads(path.read_text()).items() if k in ("before", "after")} if path.exists() else {}
    runs[args.label] = run
    record.write("mutation", meta, runs, markdown(runs))
    total = run["total"]
    print(f"{args.label}: {total['killed']}/{total['mutants']} mutants killed ({total['score']:.1%}), "
          f"{total['survived']} survived")
    unargued = [s["name"] for s in run["survivors"] if not s["reason"]]
    if unargued and args.label == "after":
        raise SystemExit(f"{len(unargued)} survivors have no reason in EQUIVALENT: {', '.join(unargued)}")


if __name__ == "__main__":
    main()

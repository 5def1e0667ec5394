"""Wall time of DVC's own overhead and of one experiment: a no-op `dvc repro` and `dvc exp run -S loss.gamma=1`.

The no-op repro needs every stage up to date (the script checks `dvc status` first and stops
otherwise). The experiment trains a model, so it takes minutes; it runs in the workspace, as
typed, and leaves its results there (`--temp` runs it in a temporary copy instead). If the
run-cache already holds a stage's result for these params, DVC restores it instead of running
it: the table says how many stages ran and how many were restored. Writes the table to
bench/results/dvc_timing.{json,md} of this repository, whichever REPO it timed.

Run (from anywhere; the repo must be a git + DVC repo):
    python bench/dvc_timing.py [REPO] [--noop-repeats 5] [--set loss.gamma=1] [--temp]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import record  # noqa: E402

STAGE_RAN = re.compile(r"^Running stage '([^']+)'", re.M)
STAGE_RESTORED = re.compile(r"^Stage '([^']+)' is cached - skipping run", re.M)


def dvc(repo: Path, *args: str) -> tuple[float, str]:
    """Run `dvc <args>` in `repo` (this interpreter's DVC); return wall seconds and output."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"`dvc {' '.join(args)}` failed in {repo} (exit {done.returncode}):\n"
                           f"{done.stdout}{done.stderr}")
    return seconds, done.stdout + done.stderr


def check_up_to_date(repo: Path) -> None:
    """Stop unless `dvc status` finds nothing to reproduce (else the no-op would run stages)."""
    _, out = dvc(repo, "status", "--json")
    changed = json.loads(out.strip().splitlines()[-1] or "{}")
    if changed:
        raise SystemExit(f"{repo}: stages are not up to date ({', '.join(sorted(changed))}); "
                         "run `dvc repro` there first, so the no-op timing measures a no-op.")


def stage_counts(output: str) -> str:
    ran, restored = STAGE_RAN.findall(output), STAGE_RESTORED.findall(output)
    return f"ran {', '.join(ran) or 'none'}; restored {', '.join(restored) or 'none'}"


def time_repo(repo: Path, noop_repeats: int, set_param: str, temp: bool) -> list[tuple[str, list[float], str]]:
    """(command, seconds per run, what DVC did) for the no-op repro and the experiment."""
    check_up_to_date(repo)
    noop = [dvc(repo, "repro") for _ in range(noop_repeats)]
    if any(STAGE_RAN.search(out) for _, out in noop):
        raise RuntimeError("a stage ran during the no-op repro: the pipeline is not deterministic or not up to date")
    exp_args = ["exp", "run", "-S", set_param] + (["--temp"] if temp else [])
    exp_seconds, exp_out = dvc(repo, *exp_args)
    return [("dvc repro", [s for s, _ in noop], "ran none (no-op)"),
            (f"dvc {' '.join(exp_args)}", [exp_seconds], stage_counts(exp_out))]


def table(rows: list[tuple[str, list[float], str]]) -> str:
    lines = ["| command | runs | wall s (median) | each run (s) | stages |", "|---|---|---|---|---|"]
    for command, seconds, stages in rows:
        lines.append(f"| `{command}` | {len(seconds)} | {statistics.median(seconds):.1f} "
                     f"| {', '.join(f'{s:.1f}' for s in seconds)} | {stages} |")
    return "\n".join(lines)


def results(rows: list[tuple[str, list[float], str]], repo: Path, version: str) -> dict:
    """The json fields beside the provenance: the timed repo's commit, DVC's version, every run."""
    return {"repo_commit": record.git("-C", str(repo), "rev-parse", "HEAD"), "dvc_version": version,
            "runs": [{"command": c, "seconds": s, "stages": st} for c, s, st in rows]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path, nargs="?", default=Path.cwd())
    parser.add_argument("--noop-repeats", type=int, default=5)
    parser.add_argument("--set", dest="set_param", default="loss.gamma=1", help="the experiment's -S override")
    parser.add_argument("--temp", action="store_true",
                        help="run the experiment in a temporary copy (dvc exp run --temp)")
    args = parser.parse_args()
    repo = args.repo.resolve()
    _, version = dvc(repo, "--version")
    print(f"{repo}; dvc {version.strip()}; load {os.getloadavg()}", flush=True)
    meta = record.start(f"{record.cpu_name()}, {len(os.sched_getaffinity(0))} cores")
    rows = time_repo(repo, args.noop_repeats, args.set_param, args.temp)
    md = table(rows)
    print(md)
    record.write("dvc_timing", meta, results(rows, repo, version.strip()), md)
    if not args.temp:
        print("The workspace now holds the experiment's params and outputs: "
              "`git checkout params.yaml dvc.lock && dvc checkout` returns to the baseline "
              "(`dvc exp show` lists the experiment).")


if __name__ == "__main__":
    main()

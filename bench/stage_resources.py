"""Wall time and peak memory of each pipeline stage, run through DVC one stage at a time.

Runs `dvc repro --force --single-item <stage>` for every stage in dvc.yaml order, so
dvc.lock ends up exactly as after a plain `dvc repro`, and prints a Markdown table for
BENCHMARKS.md. Each stage is measured from a fresh child process, whose largest
grandchild resident set (the stage's python, or dvc itself for tiny stages) is the peak.

Run: python bench/stage_resources.py [stage ...]   (default: all; takes as long as `dvc repro`)
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def run_one(stage: str) -> None:
    """Child mode: run one stage, print {"seconds", "peak_mib"} as the last line."""
    start = time.perf_counter()
    subprocess.run(["dvc", "repro", "--force", "--single-item", stage], cwd=ROOT, check=True)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"seconds": round(seconds, 1), "peak_mib": round(peak_mib)}))


def measure(stage: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--one", stage], cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    print(out, end="")
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:2] == ["--one"]:
        return run_one(sys.argv[2])
    stages = sys.argv[1:] or list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    results = {stage: measure(stage) for stage in stages}
    print(f"\n{platform.machine()}, {len(os.sched_getaffinity(0))} cores, torch threads default\n")
    print("| stage | wall time (s) | peak RSS (MiB) |\n|---|---:|---:|")
    for stage, r in results.items():
        print(f"| {stage} | {r['seconds']} | {r['peak_mib']} |")
    print(f"| **total** | {sum(r['seconds'] for r in results.values()):.1f} | |")


if __name__ == "__main__":
    main()

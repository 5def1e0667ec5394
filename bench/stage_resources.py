"""Wall time and peak memory of each pipeline stage, run through DVC one stage at a time.

Runs `dvc repro --force --single-item <stage>` for every stage in dvc.yaml order, so
dvc.lock ends up exactly as after a plain `dvc repro`, and prints a Markdown table for
BENCHMARKS.md. Each stage is measured from a fresh child process, whose largest
grandchild resident set (the stage's python, or dvc itself for tiny stages) is the peak.

Run: python bench/stage_resources.py [--direct] [stage ...]   (default: all; as long as `dvc repro`)
     --direct runs `python -m stages.<stage>` without DVC (a bare GPU box with only the stage
     dependencies); it leaves dvc.lock stale.
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


def run_one(stage: str, direct: bool) -> None:
    """Child mode: run one stage, print {"seconds", "peak_mib"} as the last line."""
    cmd = [sys.executable, "-m", f"stages.{stage}"] if direct else ["dvc", "repro", "--force", "--single-item", stage]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"seconds": round(seconds, 1), "peak_mib": round(peak_mib)}))


def measure(stage: str, direct: bool) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--one", stage, *(["--direct"] if direct else [])], cwd=ROOT, check=True,
        stdout=subprocess.PIPE, text=True,
    ).stdout
    print(out, end="")
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    import torch

    direct = "--direct" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--direct"]
    if args[:1] == ["--one"]:
        return run_one(args[1], direct)
    stages = args or list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    results = {stage: measure(stage, direct) for stage in stages}
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"\n{platform.machine()}, {len(os.sched_getaffinity(0))} cores, {gpu}, torch {torch.__version__}\n")
    print("| stage | wall time (s) | peak RSS (MiB) |\n|---|---:|---:|")
    for stage, r in results.items():
        print(f"| {stage} | {r['seconds']} | {r['peak_mib']} |")
    print(f"| **total** | {sum(r['seconds'] for r in results.values()):.1f} | |")


if __name__ == "__main__":
    main()

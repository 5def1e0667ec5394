"""Wall time and peak memory of each pipeline stage, run through DVC one stage at a time.

Runs `dvc repro --force --single-item <stage>` for every stage in dvc.yaml order, so
dvc.lock ends up exactly as after a plain `dvc repro`, and writes the table to
bench/results/stage_resources.{json,md}. Each stage is measured from a fresh child process, whose
largest grandchild resident set (the stage's python, or dvc itself for tiny stages) is the peak.
`--repo` runs the stages in another checkout (a fresh clone: no `dvc repro` in a workspace that is
in use); the results still land in this repository's bench/results/.

Run: python bench/stage_resources.py [--repo REPO] [--direct] [stage ...]   (default: all; as long as `dvc repro`)
     --direct runs `python -m stages.<stage>` without DVC (a bare GPU box with only the stage
     dependencies); it leaves dvc.lock stale.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import record  # noqa: E402


def run_one(stage: str, direct: bool, repo: Path) -> None:
    """Child mode: run one stage, print {"seconds", "peak_mib"} as the last line."""
    cmd = [sys.executable, "-m", f"stages.{stage}"] if direct else ["dvc", "repro", "--force", "--single-item", stage]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=repo, check=True)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"seconds": round(seconds, 1), "peak_mib": round(peak_mib)}))


def measure(stage: str, direct: bool, repo: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--one", stage, "--repo", str(repo), *(["--direct"] if direct else [])],
        cwd=repo, check=True, stdout=subprocess.PIPE, text=True,
    ).stdout
    print(out, end="")
    return json.loads(out.strip().splitlines()[-1])


def table(results: dict[str, dict]) -> str:
    lines = ["| stage | wall time (s) | peak RSS (MiB) |", "|---|---:|---:|"]
    lines += [f"| {stage} | {r['seconds']:.1f} | {r['peak_mib']:,} |" for stage, r in results.items()]
    total = sum(r["seconds"] for r in results.values())
    return "\n".join([*lines, f"| **total** | **{total:.1f}** | {max(r['peak_mib'] for r in results.values()):,} |"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stages", nargs="*", help="default: every stage of REPO's dvc.yaml, in order")
    parser.add_argument("--repo", type=Path, default=ROOT, help="the checkout to run the stages in")
    parser.add_argument("--direct", action="store_true", help="python -m stages.<stage>, without DVC")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    repo = args.repo.resolve()
    if args.one:
        return run_one(args.one, args.direct, repo)
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    meta = record.start(f"{record.cpu_name()}, {len(os.sched_getaffinity(0))} cores, {gpu}, torch {torch.__version__}")
    stages = args.stages or list(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    results = {stage: measure(stage, args.direct, repo) for stage in stages}
    md = table(results)
    print(md)
    record.write("stage_resources", meta, {"repo_commit": record.git("-C", str(repo), "rev-parse", "HEAD"),
                                           "direct": args.direct, "stages": results}, md)


if __name__ == "__main__":
    main()

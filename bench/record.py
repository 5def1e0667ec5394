"""Results files of the speed and scale bench scripts: bench/results/NAME.json and NAME.md.

The json holds the numbers and how they were made (date, git commit, the command, the machine, its
load average before and after); the md holds a line saying when, where and under what load, then the
table that tools/tables.py copies into README.md and BENCHMARKS.md. `start()` before measuring,
`write()` after: a run's load is only known once it has ended.

Used by: bench/train_throughput.py, backtranslate.py, bigdata.py, dvc_timing.py, stage_resources.py,
mutation.py; `git()` also by ablation.py, choose.py and predict_memory.py; `experiment()` by
ablation.py and decision.py (the runs bench/encoder.py recorded).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench/results"
SHARED_LOAD = 1.0  # a 1-minute load average above this: something else used the CPU during the run


def experiment(row: dict) -> str:
    """The DVC experiment name a bench/encoder.py results row ran as (`-n` of its command; profiles get
    renamed since, experiments do not)."""
    return re.search(r" -n (\S+)", row["command"]).group(1)


def cpu_name() -> str:
    """The processor's model name (/proc/cpuinfo), or 'cpu' where there is none."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "cpu"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "cpu")


def git(*args: str, check: bool = False) -> str:
    """`git ARGS` in the repo root, stripped stdout; "" on failure unless `check` (then it raises)."""
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=check)
    return done.stdout.strip() if done.returncode == 0 else ""


def start(device: str | None = None) -> dict:
    """The provenance fields, taken before the run: date, commit, uncommitted code, command, device, load."""
    changed = git("status", "--porcelain", "--", "stages", "bench", "tools").splitlines()
    return {
        "date": datetime.date.today().isoformat(), "commit": git("rev-parse", "HEAD"),
        # code that ran but is not in that commit (results files themselves do not count)
        "uncommitted": [line[3:] for line in changed if line[3:].endswith(".py")],
        "command": shlex.join(["python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
        "device": device or f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores",
        "load_before": list(os.getloadavg()),
    }


def header(meta: dict) -> str:
    """One visible line: when, at which commit, on what, under which load (and whether the CPU was shared)."""
    before, after = meta["load_before"][0], meta["load_after"][0]
    shared = max(before, after) > SHARED_LOAD
    return (f"{meta['date']}, commit {meta['commit'][:7]}, {meta['device']}; 1-min load average {before:.1f} "
            f"before, {after:.1f} after" + (": **the CPU was shared with other processes** (absolute times are "
                                            "upper bounds)" if shared else ""))


def write(name: str, meta: dict, data: dict, table: str, results: Path = RESULTS) -> tuple[Path, Path]:
    """bench/results/NAME.json ({**meta, load_after, **data}) and NAME.md (header line + table), atomically."""
    meta = {**meta, "load_after": list(os.getloadavg())}
    md = (f"<!-- the table of {name}.json, written by: {meta['command']} -->\n"
          f"{header(meta)}\n\n{table.rstrip()}\n")
    results.mkdir(parents=True, exist_ok=True)
    paths = results / f"{name}.json", results / f"{name}.md"
    for path, text in zip(paths, (json.dumps({**meta, **data}, indent=2) + "\n", md)):
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    print(f"wrote {paths[0]} and {paths[1].name}")
    return paths

"""Wall time of a DVC remote round trip: `dvc push` from one clone, `dvc pull` into a teammate's fresh clone.

Runs on the toy project of tests/toy_remote.py (the same setup as tests/test_remote.py), never on the
real pipeline: `models/train/weights.bin` is sized by --sizes-mb, e.g. 90 MB, the size of the default
MiniLM `models/train`. Remotes: a directory on this disk, and an S3 bucket on moto's S3-compatible
server on 127.0.0.1 (dvc-s3). Per remote and size: the first `dvc push` (the remote is empty), a
second one (nothing to send), `dvc pull` in a fresh clone (empty cache), and its `dvc repro` (a no-op).
Everything runs on loopback; moto keeps objects in memory, so S3 numbers measure DVC and the HTTP
path, not a network. CPU is shared with whatever else runs: the numbers are indicative.

Run: python bench/remote_roundtrip.py [--sizes-mb 0.0625 90] [--remotes directory s3] [--output PATH]
Writes bench/results/remote.json (date, commit, command, numbers) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from toy_remote import (bare_origin, clean_env, clone, dvc, init_project, moto_s3,  # noqa: E402
                        output_files, s3_env)

STEPS = ["push", "push (up to date)", "pull (fresh clone)", "repro (no-op)"]


def timed(cwd: Path, *args: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    dvc(cwd, *args, env=env)
    return round(time.perf_counter() - start, 2)


@contextlib.contextmanager
def remote(kind: str, workdir: Path):
    """(url, `dvc remote modify` options, environment) of an empty remote of `kind`."""
    if kind == "directory":
        yield str(workdir / "storage"), {}, clean_env()
    else:
        with moto_s3("bench") as endpoint:
            yield "s3://bench/textclf", {"endpointurl": endpoint}, s3_env(workdir)


def round_trip(kind: str, size_mb: float, workdir: Path) -> dict:
    """Seconds per step of one push/pull round trip through a fresh remote of `kind`."""
    with remote(kind, workdir) as (url, options, env):
        origin = bare_origin(workdir / "origin.git")
        alice = init_project(workdir / "alice", origin, url, options, env=env,
                             train={"size_kb": max(1, round(size_mb * 1024))})
        seconds = [timed(alice, "push", env=env), timed(alice, "push", env=env)]
        bob = clone(origin, workdir / "bob")
        seconds.append(timed(bob, "pull", env=env))
        if output_files(bob) != output_files(alice):
            raise RuntimeError(f"{kind}: the pulled outputs differ from the pushed ones")
        seconds.append(timed(bob, "repro", env=env))
    total = sum(len(b) for b in output_files(bob).values())
    return {"remote": kind, "size_mb": round(total / 2**20, 3), "seconds": dict(zip(STEPS, seconds))}


def table(rows: list[dict]) -> str:
    lines = ["| remote | outputs (MB) | " + " | ".join(f"{s} (s)" for s in STEPS) + " |",
             "|---|---:|" + "---:|" * len(STEPS)]
    for row in rows:
        lines.append(f"| {row['remote']} | {row['size_mb']:g} | "
                     + " | ".join(f"{row['seconds'][s]:.2f}" for s in STEPS) + " |")
    return "\n".join(lines)


def save(result: dict, path: Path) -> None:
    """The results json, and its table (.md) beside it: what README.md quotes."""
    from stages.common import write_text

    write_text(path, json.dumps(result, indent=2) + "\n")
    write_text(path.with_suffix(".md"), f"<!-- written by bench/remote_roundtrip.py ({result['date'][:10]}, commit "
               f"{result['commit']}, {result['cpus']} cores, 1-min load at end {result['load_avg_at_end'][0]}) -->\n"
               + table(result["rows"]) + "\n")


def main() -> None:
    if sys.argv[1:2] == ["--table"]:  # re-render the .md of the saved results
        path = REPO / "bench/results/remote.json"
        return save(json.loads(path.read_text()), path)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[0.0625, 90.0],
                        help="sizes of models/train/weights.bin (0.0625 = the tests' toy; 90 = MiniLM's models/train)")
    parser.add_argument("--remotes", nargs="+", choices=["directory", "s3"], default=["directory", "s3"])
    parser.add_argument("--output", type=Path, default=REPO / "bench/results/remote.json")
    args = parser.parse_args()
    rows = []
    for size in args.sizes_mb:
        for kind in args.remotes:
            with tempfile.TemporaryDirectory(prefix="remote-bench-") as tmp:
                rows.append(round_trip(kind, size, Path(tmp)))
            print(f"{kind}, {size:g} MB: {rows[-1]['seconds']}", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "commit": commit.stdout.strip(), "command": " ".join(["python", *sys.argv]),
              "cpus": os.cpu_count(), "load_avg_at_end": [round(x, 2) for x in os.getloadavg()], "rows": rows}
    save(result, args.output)
    print(table(rows))
    print(f"wrote {args.output} (commit {result['commit']}, load {result['load_avg_at_end']})")


if __name__ == "__main__":
    main()

"""Wall time and peak memory of prepare, tokenizer and alpha on a large synthetic corpus.

Writes N rows of short texts (five imbalanced classes, about 3% repeated texts, a few of them
with another label) as data/raw/big.csv of a scratch copy of the project, points params.yaml
at it and runs each stage as `python -m stages.<name>` in its own process, started by a small
launcher process (Linux counts a child's peak RSS from its parent's size at fork). Alpha
reads prepare's train split in place of augment's output (the rows `augment.enabled: false`
passes through; augment is not part of this benchmark). tests/test_bigdata.py uses the same
harness with a tiny model.

Writes bench/results/bigdata.{json,md}: per size and stage, wall seconds and peak RSS.

Run: python bench/bigdata.py [N ...]   (default 200000 rows, base model bundled-minilm)
"""

from __future__ import annotations

import csv
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Callable

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import record  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("prepare", "tokenizer", "alpha")
MODEL = "bundled-minilm"
# Imbalanced like real label sets: the rarest class has 1/30 of the largest one's rows.
CLASS_SHARES = {"sports": 0.45, "politics": 0.25, "tech": 0.15, "health": 0.1, "travel": 0.05}
REPEAT_SHARE = 0.03  # rows that repeat an earlier text (dedupe has work to do)
CONFLICT_SHARE = 0.1  # of those repeats, the share that carries another label


def pseudo_words(rng: random.Random, n: int) -> list[str]:
    """`n` pronounceable made-up words: a base tokenizer splits them, SentencePiece can learn them."""
    syllables = [c + v for c in "bcdfgklmnprstvz" for v in "aeiou"]
    return ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(n)]


def write_corpus(path: Path, n_rows: int, seed: int = 0) -> None:
    """A CSV (text,label) of `n_rows` short texts, written row by row; each class has its own words."""
    rng = random.Random(seed)
    shared = pseudo_words(rng, 300)
    own = {label: pseudo_words(rng, 100) for label in CLASS_SHARES}
    recent: deque[tuple[str, str]] = deque(maxlen=1000)  # texts to repeat: a bounded window, not all rows
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(n_rows):
            if recent and rng.random() < REPEAT_SHARE:
                text, label = rng.choice(recent)
                if rng.random() < CONFLICT_SHARE:
                    label = rng.choice(list(CLASS_SHARES))
            else:
                label = rng.choices(list(CLASS_SHARES), weights=list(CLASS_SHARES.values()))[0]
                words = rng.choices(shared, k=rng.randint(4, 10)) + rng.choices(own[label], k=rng.randint(1, 3))
                rng.shuffle(words)
                text = f"{' '.join(words).capitalize()} #{i}." if rng.random() < 0.5 else " ".join(words)
            writer.writerow([text, label])
            if i % 7 == 0:
                recent.append((text, label))


def make_project(root: Path, n_rows: int, model_name: str, seed: int = 0) -> None:
    """A scratch copy of the project in `root` (stages/ and params.yaml) whose data.source is the corpus."""
    shutil.copytree(ROOT / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    write_corpus(root / "data/raw/big.csv", n_rows, seed)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source="data/raw/big.csv", text_column="text", label_column="label")
    params["model"]["name"] = model_name
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def measure(stage: str) -> None:
    """Launcher mode, in the project root: run the stage, print its wall seconds and peak RSS as JSON."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", f"stages.{stage}"], check=True, stdout=subprocess.DEVNULL)
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux reports KiB
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_mib": peak_mib}))


def run_stage(root: Path, stage: str) -> dict[str, float]:
    """Run `python -m stages.<stage>` in `root`: {"seconds", "peak_mib"}. A small launcher process starts
    it, because Linux counts a child's peak from the RSS of the process it was forked from."""
    env = {**os.environ, "PIPELINE_ROOT": str(root), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, __file__, "--measure", stage], cwd=root, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if done.returncode:
        raise RuntimeError(f"stages.{stage} failed:\n{done.stderr[-4000:]}")
    if stage == "prepare":  # alpha's input, as augment.enabled: false would pass it through
        (root / "data/augment").mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "data/prepare/train.jsonl", root / "data/augment/train.jsonl")
    return json.loads(done.stdout.splitlines()[-1])


def bench(sizes: list[int], model_name: str, setup: Callable[[Path], None] | None = None) -> list[dict]:
    """For each size: a fresh scratch project (then `setup(root)`, e.g. a local model), every stage run once."""
    runs = []
    for n_rows in sizes:
        with tempfile.TemporaryDirectory(prefix="bigdata-") as tmp:
            root = Path(tmp)
            make_project(root, n_rows, model_name)
            if setup:
                setup(root)
            csv_bytes = (root / "data/raw/big.csv").stat().st_size
            runs.append({"rows": n_rows, "csv_bytes": csv_bytes,
                         "stages": {stage: run_stage(root, stage) for stage in STAGES}})
    return runs


def table(runs: list[dict]) -> str:
    lines = ["| rows | CSV (MiB) | stage | wall time (s) | peak RSS (MiB) |", "|---:|---:|---|---:|---:|"]
    for run in runs:
        for stage, r in run["stages"].items():
            lines.append(f"| {run['rows']:,} | {run['csv_bytes'] / 2**20:.1f} | {stage} | {r['seconds']:.1f} "
                         f"| {r['peak_mib']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--measure"]:
        return measure(sys.argv[2])
    sizes = [int(a) for a in sys.argv[1:]] or [200_000]
    meta = record.start(f"{record.cpu_name()}, {len(os.sched_getaffinity(0))} cores")
    runs = bench(sizes, MODEL)
    md = table(runs)
    print(md)
    record.write("bigdata", meta, {"model": MODEL, "class_shares": CLASS_SHARES, "repeat_share": REPEAT_SHARE,
                                   "conflict_share": CONFLICT_SHARE, "runs": runs}, md)


if __name__ == "__main__":
    main()

"""Wall time and peak memory of prepare, tokenizer and alpha on a large synthetic corpus.

Writes N rows of short texts (five imbalanced classes, about 3% repeated texts, a few of them
with another label) as data/raw/big.csv of a scratch copy of the project, points params.yaml
at it and runs each stage as `python -m stages.<name>` in its own process, started by a small
launcher process (Linux counts a child's peak RSS from its parent's size at fork). Alpha
reads prepare's train split in place of augment's output (the rows `augment.enabled: false`
passes through; augment is not part of this benchmark). tests/test_bigdata.py uses the same
harness with a tiny model.

Run: python bench/bigdata.py [N]   (default 200000 rows, base model bundled-minilm)
"""

from __future__ import annotations

import csv
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("prepare", "tokenizer", "alpha")
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


def main() -> None:
    if sys.argv[1:2] == ["--measure"]:
        return measure(sys.argv[2])
    n_rows = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    with tempfile.TemporaryDirectory(prefix="bigdata-") as tmp:
        root = Path(tmp)
        make_project(root, n_rows, "bundled-minilm")
        size_mib = (root / "data/raw/big.csv").stat().st_size / 2**20
        results = {stage: run_stage(root, stage) for stage in STAGES}
    print(f"\n{n_rows} rows ({size_mib:.1f} MiB CSV); {platform.machine()}, {len(os.sched_getaffinity(0))} cores\n")
    print("| stage | wall time (s) | peak RSS (MiB) |\n|---|---:|---:|")
    for stage, r in results.items():
        print(f"| {stage} | {r['seconds']:.1f} | {r['peak_mib']:.0f} |")


if __name__ == "__main__":
    main()

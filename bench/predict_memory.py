"""Peak memory and throughput of batch predictions (tools.predict) on growing files of short texts.

For each size, writes a CSV of that many short texts (bench/bigdata.py's synthetic corpus) and
runs `python -m tools.predict` on it in its own process, started by a small launcher process
(Linux counts a child's peak RSS from its parent's size at fork): wall time, rows/s and peak
RSS. Streaming means the peak stays flat as the file grows. The model is models/train when it
exists, else a stand-in with the same compute: the bundled MiniLM with a fresh 3-class head and
the pipeline's model.max_length / model.truncation (`--model DIR` for another model dir;
`--model tiny` for the tests' tiny random BERT, max length 64: memory without the model's cost,
e.g. to check flatness at 200,000 rows on a slow CPU).
Results go to bench/results/predict.json (date, commit, command, machine) and a markdown table.

Run: python bench/predict_memory.py [--sizes 10000,200000] [--model DIR|tiny] [--batch-size 64] [--threads N]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bigdata.py, beside this file

from bigdata import write_corpus  # noqa: E402

from bench import record  # noqa: E402  (bigdata put the repo root on sys.path)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench/results/predict.json"  # one entry per model and --threads: {"<model>, threads <n>": run}


def stand_in_model(out_dir: Path) -> Path:
    """The bundled MiniLM with an untrained 3-class head, saved as a models/train dir (same cost per text)."""
    import yaml
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from stages.common import resolve_model_name, write_json

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    base = resolve_model_name("bundled-minilm")
    AutoModelForSequenceClassification.from_pretrained(base, num_labels=3).save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(base).save_pretrained(out_dir)
    write_json(out_dir / "pipeline.json", {"labels": ["negative", "neutral", "positive"], "model": params["model"],
                                           "note": "bench stand-in: bundled MiniLM, untrained head"})
    return out_dir


def tiny_model(out_dir: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_classifier import build_model_dir

    build_model_dir(out_dir, max_length=64)  # the tiny BERT has 64 positions
    pipeline = json.loads((out_dir / "pipeline.json").read_text())
    (out_dir / "pipeline.json").write_text(json.dumps({**pipeline, "note": "tests' tiny random BERT"}))
    return out_dir


def measure(args: list[str]) -> None:
    """Launcher mode: run tools.predict with `args`, print its wall seconds and peak RSS as JSON."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tools.predict", *args], check=True, cwd=ROOT)
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux reports KiB
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_mib": peak_mib}))


def run_size(tmp: Path, n_rows: int, model: Path, batch_size: int, threads: int | None) -> dict:
    source, output = tmp / f"in-{n_rows}.csv", tmp / f"out-{n_rows}.csv"
    write_corpus(source, n_rows)
    args = [str(source), "--output", str(output), "--model", str(model), "--batch-size", str(batch_size),
            *(["--threads", str(threads)] if threads else [])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, __file__, "--measure", *args], env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    if done.returncode:
        raise RuntimeError(f"tools.predict failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.splitlines()[-1])
    with open(output, encoding="utf-8") as f:
        written = sum(1 for _ in f) - 1
    assert written == n_rows, f"{written} predictions for {n_rows} rows"
    mib = source.stat().st_size / 2**20
    source.unlink()
    output.unlink()
    return {"rows": n_rows, "csv_mib": round(mib, 1), "seconds": round(result["seconds"], 1),
            "rows_per_s": round(n_rows / result["seconds"], 1), "peak_rss_mib": round(result["peak_mib"])}


def main() -> None:
    if sys.argv[1:2] == ["--measure"]:
        return measure(sys.argv[2:])
    if sys.argv[1:2] == ["--table"]:  # re-render bench/results/predict.md from the saved runs
        return save(json.loads(RESULTS.read_text()))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,200000", help="comma-separated row counts")
    parser.add_argument("--model", help="a models/train-style dir, or tiny (default: models/train or a stand-in)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, help="tools.predict --threads (default: torch's)")
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory(prefix="predict-bench-") as tmp:
        if args.model == "tiny":
            model = tiny_model(Path(tmp) / "model")
        elif args.model:
            model = Path(args.model)
        else:
            model = ROOT / "models/train" if (ROOT / "models/train/pipeline.json").exists() else stand_in_model(
                Path(tmp) / "model")
        pipeline = json.loads((model / "pipeline.json").read_text())
        rows = [run_size(Path(tmp), int(n), model, args.batch_size, args.threads) for n in args.sizes.split(",")]
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": record.git("rev-parse", "--short", "HEAD") or "unknown",
        "command": " ".join(["python", "bench/predict_memory.py", *sys.argv[1:]]),
        "model": pipeline.get("note", str(model)), "max_length": pipeline["model"]["max_length"],
        "truncation": pipeline["model"]["truncation"], "batch_size": args.batch_size, "threads": args.threads or "default",
        "device": "cuda" if torch.cuda.is_available() else "cpu", "machine": platform.machine(),
        "cpus": len(os.sched_getaffinity(0)), "load_avg_at_end": [round(x, 2) for x in os.getloadavg()], "rows": rows,
    }
    saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    save({**saved, f"{result['model']}, threads {result['threads']}": result})
    print(markdown({"this run": result}))


def markdown(saved: dict) -> str:
    """One table over every saved run (model, threads), what README.md quotes."""
    lines = ["| model | max length | threads | rows | CSV (MiB) | wall time (s) | rows/s | peak RSS (MiB) | "
             "1-min load at end |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in saved.values():
        for r in run["rows"]:
            lines.append(f"| {run['model']} | {run['max_length']} | {run['threads']} | {r['rows']:,} | {r['csv_mib']} "
                         f"| {r['seconds']} | {r['rows_per_s']} | {r['peak_rss_mib']} | {run['load_avg_at_end'][0]} |")
    return "\n".join(lines) + "\n"


def save(saved: dict) -> None:
    """bench/results/predict.json and its table (.md) beside it."""
    from stages.common import write_text

    commits = ", ".join(sorted({run["commit"][:7] for run in saved.values()}))
    write_text(RESULTS, json.dumps(saved, indent=2) + "\n")
    write_text(RESULTS.with_suffix(".md"), f"<!-- written by bench/predict_memory.py from predict.json; commits {commits} -->\n"
               + markdown(saved))

if __name__ == "__main__":
    main()

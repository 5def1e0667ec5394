"""Batch predictions: apply the trained classifier to a CSV or JSONL file of new texts.

    python -m tools.predict new.csv --output preds.csv                             # models/train
    python -m tools.predict new.jsonl --output preds.csv --model models:/text-classifier/3
    make predict INPUT=new.csv [OUTPUT=preds.csv] [MODEL=models:/text-classifier/3]

Input: a .csv (with a header) or .jsonl file; the text is the column `data.text_column` of
params.yaml, as for training data (`--text-column` overrides it). Each text is cleaned as
`prepare` cleans training texts, then cut and batched exactly as `evaluate` does
(stages/classifier.py), so a row gets the probabilities evaluate would give it.
Output: a CSV with `id` (the input's `id` column; without one, `row`: the 1-based data row),
`predicted` (the label) and `prob_<label>` for each class.
The file is streamed in chunks of CHUNK_ROWS rows (sorted by length inside a chunk), so memory
does not grow with it. The output is written to a temp file and renamed at the end: a bad row
(missing column, blank text, not UTF-8, not JSON) stops the run with one message naming it, and
nothing is written. Several processes or GPUs: split the file (`split -l`), run one process per
part (`CUDA_VISIBLE_DEVICES=i`, or `--threads 1` per process on a CPU), concatenate the outputs.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

from stages.classifier import Classifier, clean_texts, prob_columns
from stages.cli import cli
from stages.common import ROOT, atomic_file, read_params

CHUNK_ROWS = 4096  # rows held at a time; a multiple of any usual batch size
ID = "id"


def csv_records(path: Path, text_column: str) -> Iterator[tuple[str | None, object]]:
    """(id or None, text) per data row of a CSV with a header, read as it goes."""
    csv.field_size_limit(2**31 - 1)  # a long text is one field; the default limit is 128 KiB
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise ValueError(f"{path} is empty: expected a header row naming a '{text_column}' column")
        if text_column not in reader.fieldnames:
            raise ValueError(f"{path}: no column '{text_column}'; columns found: {reader.fieldnames}. "
                             "Set data.text_column in params.yaml or pass --text-column")
        has_id = ID in reader.fieldnames
        for row in reader:
            yield (row[ID] if has_id else None), row[text_column]


def jsonl_records(path: Path, text_column: str) -> Iterator[tuple[str | None, object]]:
    """(id or None, text) per non-blank line of a JSONL file, read as it goes."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {n} is not valid JSON ({e.msg}); each line must be one object") from e
            if not isinstance(obj, dict) or text_column not in obj:
                found = list(obj) if isinstance(obj, dict) else type(obj).__name__
                raise ValueError(f"{path}: line {n} has no key '{text_column}' ({found}). "
                                 "Set data.text_column in params.yaml or pass --text-column")
            yield (str(obj[ID]) if ID in obj else None), obj[text_column]


def read_records(path: Path, text_column: str) -> Iterator[tuple[str | None, object]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise ValueError(f"{path}: unknown file type '{path.suffix}'; use a .csv or .jsonl file")
    return (csv_records if path.suffix.lower() == ".csv" else jsonl_records)(path, text_column)


def predict_file(classifier: Classifier, source: Path, output: Path, text_column: str, batch_size: int) -> int:
    """Write the predictions for every row of `source` to `output` (atomically); returns the row count."""
    from tqdm.auto import tqdm

    records, n = read_records(source, text_column), 0
    with atomic_file(output) as tmp, open(tmp, "w", encoding="utf-8", newline="") as out, \
            tqdm(desc="predict", unit="row") as bar:
        writer = csv.writer(out, lineterminator="\n")
        try:
            while chunk := list(itertools.islice(records, CHUNK_ROWS)):
                ids, texts = zip(*chunk)
                if n == 0:
                    writer.writerow([ID if ids[0] is not None else "row", "predicted", *prob_columns(classifier.labels)])
                probs = classifier.predict_proba(clean_texts(texts, str(source), n + 1), batch_size)
                for i, (row_id, p) in enumerate(zip(ids, probs), n + 1):
                    writer.writerow([row_id if row_id is not None else i, classifier.labels[int(np.argmax(p))],
                                     *(f"{x:.6f}" for x in p)])
                n += len(chunk)
                bar.update(len(chunk))
        except UnicodeDecodeError as e:
            raise ValueError(f"{source}: not UTF-8 text ({e.reason}: byte {e.object[e.start:e.start + 1]!r}, "
                             f"after data row {n}); save it as UTF-8, e.g. `iconv -f latin1 -t utf-8`") from e
        if n == 0:
            raise ValueError(f"{source}: no data rows; nothing to predict")
    return n


def load_model(spec: str) -> Classifier:
    """A models/train-style dir, or an MLflow model URI (models:/..., runs:/..., a logged model's dir)."""
    if ":/" not in spec and not (Path(spec) / "MLmodel").is_file():  # not models:/..., runs:/..., file:/...
        return Classifier.load(Path(spec))  # a missing dir fails naming it and how to make it
    from stages import mlflow_model

    return mlflow_model.load(spec)


def main(argv: list[str] | None = None) -> None:
    from transformers.utils import logging as transformers_logging

    params = read_params(ROOT / "params.yaml")
    parser = argparse.ArgumentParser(prog="python -m tools.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path, help="a .csv or .jsonl file")
    parser.add_argument("--output", type=Path, required=True, help="predictions CSV to write")
    parser.add_argument("--model", default=str(ROOT / "models/train"),
                        help="a trained model dir (default models/train) or an MLflow model URI, e.g. models:/text-classifier/1")
    parser.add_argument("--text-column", default=params["data"]["text_column"],
                        help="the column holding the text (default: data.text_column in params.yaml)")
    parser.add_argument("--batch-size", type=int, default=params["evaluate"]["batch_size"],
                        help="texts per forward pass (default: evaluate.batch_size); memory, not results")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core); 1 when "
                        "several processes share the cores")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    next(iter(read_records(args.input, args.text_column)), None)  # a wrong file fails before the model loads
    transformers_logging.disable_progress_bar()  # "Loading weights" bars: noise around the one that counts
    classifier = load_model(args.model)
    n = predict_file(classifier, args.input, args.output, args.text_column, args.batch_size)
    print(f"predict: {n} rows -> {args.output} ({len(classifier.labels)} classes, {classifier.device})", file=sys.stderr)


if __name__ == "__main__":
    cli("predict", main)

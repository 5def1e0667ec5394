"""Tests for stages.log: flattening, lineage tags, and a run() read back from a real sqlite MLflow store."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.common import RUNTIME_DIR, write_json, write_text
from stages.log import LogParams, flatten, lineage_tags, metric_key, numeric_metrics, run

REPO = Path(__file__).resolve().parent.parent
PARAMS = {
    "seed": 42,
    "data": {"source": "drugreview", "test_path": None},
    "model": {"name": "bundled-minilm", "max_length": 128, "truncation": "head"},
    "loss": {"gamma": 2.0},
    "train": {"max_epochs": 3, "swa": {"enabled": True, "lr": 2.0e-5, "keep": "best"}},
    "log": {"experiment_name": "unit-test"},
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


def make_root(root):
    """The files the log stage reads, as the upstream stages would leave them."""
    write_text(root / "params.yaml", yaml.safe_dump(PARAMS))
    write_text(root / "dvc.lock", "schema: '2.0'\nstages: {}\n")
    for stage in ("prepare", "tokenizer", "pretrain", "augment", "alpha"):
        write_json(root / f"metrics/{stage}.json", {"n_rows": 10, "note": "text is skipped"})
    write_json(root / "metrics/train.json", {"best_epoch": 2, "kept": "best", "best_val_loss": 0.6})
    write_json(root / "metrics/evaluate.json", TEST_METRICS)
    write_json(root / "plots/train/history.json", HISTORY)
    write_text(root / "plots/evaluate/predictions.csv", "id,actual,predicted,confidence\n1,negative,negative,0.9\n")
    write_json(root / "models/train/pipeline.json", {"seed": 42, "labels": ["negative", "sci&tech"],
                                                     "model": {"name": "bundled-minilm", "max_length": 128, "truncation": "head"},
                                                     "loss": {}, "train": {}, "kept": "swa"})
    write_json(root / RUNTIME_DIR / "train.json", {"device": "cpu", "wall_time_s": 12.5})
    write_json(root / RUNTIME_DIR / "augment.json", {"translations": {"cached": 3, "computed": 0}})


def test_run_logs_params_curves_metrics_tags_and_artifacts(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    root, uri = tmp_path / "repo", f"sqlite:///{tmp_path}/store/mlflow.db"
    (tmp_path / "store").mkdir()
    make_root(root)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-test")
    result = run(LogParams(experiment_name="unit-test"), root=root, tracking_uri=uri)
    client = MlflowClient(uri)
    logged = client.get_run(result["run_id"])
    assert logged.info.status == "FINISHED"
    experiment = client.get_experiment(logged.info.experiment_id)
    assert experiment.name == "unit-test"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # UI opens on the runs table
    params = logged.data.params
    assert params["train.swa.lr"] == "2e-05" and params["seed"] == "42" and params["data.test_path"] == "None"
    assert len([k for k in params if not k.startswith("mlflow.")]) == len(flatten(PARAMS))
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
    assert {"metrics", "plots", "model", "params.yaml", "dvc.lock", "model_card.md"} <= artifacts
    assert {a.path for a in client.list_artifacts(result["run_id"], "plots/train")} == {"plots/train/history.json"}
    assert "metrics/evaluate.json" in {a.path for a in client.list_artifacts(result["run_id"], "metrics")}
    card = (tmp_path / "card").resolve()
    client.download_artifacts(result["run_id"], "model_card.md", str(card.parent))
    text = (card.parent / "model_card.md").read_text()
    assert "Kept model: swa" in text and "| macro_f1 | 0.5000 |" in text and "sci&tech" in text
    again = run(LogParams(experiment_name="unit-test"), root=root, tracking_uri=uri)  # reuses the experiment
    assert len(client.search_runs([logged.info.experiment_id])) == 2 and again["run_id"] != result["run_id"]
    # Artifacts live beside the sqlite store, and the repo root gains no files.
    assert logged.info.artifact_uri.startswith((tmp_path / "store/mlruns").as_uri())
    assert sorted(p.name for p in root.iterdir()) == [".cache", "dvc.lock", "metrics", "models", "params.yaml", "plots"]


def test_run_names_the_missing_file_and_its_stage(tmp_path):
    make_root(tmp_path)
    (tmp_path / "metrics/train.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"metrics/train.json \(run `dvc repro train`\)"):
        run(LogParams(experiment_name="x"), root=tmp_path, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert not (tmp_path / "mlflow.db").exists()


def test_temp_experiment_copy_logs_to_the_repository_store(tmp_path, monkeypatch):
    """`dvc exp run --temp` and queued runs execute in <repo>/.dvc/tmp/exps/<tmp>/, thrown away after."""
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    copy = tmp_path / ".dvc/tmp/exps/tmpabc123"
    make_root(copy)
    result = run(LogParams(experiment_name="unit-test"), root=copy)
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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def mlflow_server(tmp_path):
    """A real `mlflow server` on loopback (sqlite backend, served artifacts, one worker)."""
    import time
    import urllib.request

    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "art")],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


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
    assert {"metrics", "plots", "model", "params.yaml", "dvc.lock", "model_card.md"} <= artifacts
    assert any((tmp_path / "art").rglob("model_card.md"))  # uploaded through the server


def test_unreachable_tracking_server_fails_fast_naming_uri_and_fallback(tmp_path):
    import time

    make_root(tmp_path)
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=rf"MLFLOW_TRACKING_URI={uri} .*unset MLFLOW_TRACKING_URI"):
        run(LogParams(experiment_name="x"), root=tmp_path, tracking_uri=uri)
    assert time.monotonic() - start < 30


def test_run_name_follows_dvc_exp_show_rows():
    from stages.log import run_name

    assert run_name({"dvc.exp_name": "calm-reef", "git.commit": "abc1234ffff"}) == "calm-reef"
    assert run_name({"git.commit": "abc1234ffff"}) == "workspace@abc1234"
    assert run_name({"git.commit": "unknown"}) is None

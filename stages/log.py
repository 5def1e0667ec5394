"""Record one pipeline run in MLflow: params, curves, metrics, plots, lineage, data and the model.

Inputs:  params.yaml, metrics/*.json, plots/train/history.json, plots/ files, dvc.lock (if
         present), models/train/, data/augment/train.jsonl, data/prepare/{val,test}.jsonl
Outputs: one MLflow run in the store at $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db
         (artifacts beside a sqlite store, in <its dir>/mlruns), with the classifier as a pyfunc
         model (stages/mlflow_model.py) registered as a new version of `log.registered_model`, the
         three splits as dataset inputs (digest = the file's md5, as in dvc.lock) and the pipeline's
         real start and end (.cache/runtime/times/, written by stages/cli.py for each stage).
         Queued and --temp experiments log to the repository's store too (common.workspace_root),
         under the DVC experiment's name; runs that log at once take turns on a sqlite store.
         Runtime facts (.cache/runtime/*.json: wall times, device, cache hits) go to MLflow only.
         .cache/log/logged.json (git-ignored, a DVC out): what was logged, the same bytes for the
         same inputs. A fresh clone lacks it, so its first `dvc repro` logs a run even when every
         other stage's outputs come back unchanged; a no-op `dvc repro` stays a no-op.
Params:  log; every params.yaml key is logged
Run:     python -m stages.log
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from stages.cli import TIMES_DIR, cli, launcher
from stages.common import ROOT, RUNTIME_DIR, load_section, read_json, read_params, write_json, workspace_root
from stages.mlflow_store import check_server, ensure_experiment, store_lock, ui_links

# The files dvc.yaml lists as the log stage's deps, with the stage that writes each.
REQUIRED = {
    "metrics/prepare.json": "prepare", "metrics/tokenizer.json": "tokenizer", "metrics/pretrain.json": "pretrain",
    "metrics/augment.json": "augment",
    "metrics/alpha.json": "alpha", "metrics/train.json": "train", "metrics/evaluate.json": "evaluate",
    "plots/train/history.json": "train", "plots/evaluate/predictions.csv": "evaluate",
    "models/train/pipeline.json": "train", "data/augment/train.jsonl": "augment",
    "data/prepare/val.jsonl": "prepare", "data/prepare/test.jsonl": "prepare",
}
LOGGED = Path(".cache/log/logged.json")  # the stage's out: see the module docstring


@dataclass(frozen=True)
class LogParams:
    experiment_name: str  # MLflow experiment that collects the runs of this pipeline
    registered_model: str  # registry name of the classifier; each logged model is a new version
    # Which runs copy the ~90 MB weights into MLflow and register a version: workspace (`dvc repro`,
    # `dvc exp run` in the workspace), all (also queued and --temp experiments), none.
    log_model: Literal["workspace", "all", "none"]


def flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level with dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def metric_key(name: str) -> str:
    """MLflow keys allow only [A-Za-z0-9_-. /]; labels from user data may hold anything else."""
    return re.sub(r"[^\w\-. /]", "_", name, flags=re.ASCII)


def numeric_metrics(stage_metrics: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Flat numeric values of each stage's metrics under `<prefix>.`; strings, lists and bools skipped."""
    out: dict[str, float] = {}
    for prefix, metrics in stage_metrics.items():
        for key, value in flatten(metrics, f"{prefix}.").items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[metric_key(key)] = float(value)
    return out


def history_metrics(history: list[dict[str, Any]]) -> list[Any]:
    """Per-epoch curves as MLflow Metric entities with step = epoch."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [
        Metric(metric_key(key), float(value), now, int(row["epoch"]))
        for row in history
        for key, value in row.items()
        if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)
    ]


def git_output(root: Path, *args: str) -> str | None:
    """stdout of `git <args>` in `root`, or None when git is missing or root is not a repo."""
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def lineage_tags(root: Path, data_source: str) -> dict[str, str]:
    """Git commit, dirty flag, dvc.lock hash, DVC experiment name: "unknown" when unavailable."""
    commit = git_output(root, "rev-parse", "HEAD")
    # Dirty = code or params differ from the commit; the pipeline's own results (metrics,
    # plots, dvc.lock) always differ before they are committed, so they don't count.
    status = git_output(root, "status", "--porcelain", "--", ".", ":!metrics", ":!plots", ":!dvc.lock")
    lock = root / "dvc.lock"
    tags = {
        "git.commit": commit or "unknown",
        "git.dirty": "unknown" if status is None else str(bool(status)).lower(),
        "dvc.lock.sha256": hashlib.sha256(lock.read_bytes()).hexdigest() if lock.exists() else "unknown",
        "data.source": data_source,
    }
    # `dvc exp run` exports these to the stage commands it runs.
    for env, tag in (("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.exp_baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def check_inputs(root: Path) -> None:
    """Fail naming each missing input and the stage that produces it."""
    missing = [f"{path} (run `dvc repro {stage}`)" for path, stage in REQUIRED.items() if not (root / path).exists()]
    if missing:
        raise FileNotFoundError(f"log: missing input(s) under {root}: {'; '.join(missing)}")


def runtime_facts(root: Path) -> tuple[dict[str, float], dict[str, str]]:
    """Numbers (as metrics) and strings (as tags) from the stages' runtime files, `runtime.<stage>.` keys."""
    facts = {f"runtime.{path.stem}": read_json(path) for path in sorted((root / RUNTIME_DIR).glob("*.json"))}
    tags = {metric_key(k): str(v) for k, v in flatten(facts).items() if isinstance(v, str)}
    return numeric_metrics(facts), tags


def run_name(tags: dict[str, str]) -> str | None:
    """The DVC experiment's name; for a plain `dvc repro`, workspace@<commit> (None: MLflow picks one)."""
    if "dvc.exp_name" in tags:
        return tags["dvc.exp_name"]
    return None if tags["git.commit"] == "unknown" else f"workspace@{tags['git.commit'][:7]}"


def log_run(params: LogParams, root: Path, tracking_uri: str) -> dict:
    """Create the MLflow run from the files under `root`; return its id, experiment id and model version."""
    with store_lock(tracking_uri):
        return _log_run(params, root, tracking_uri)


def pipeline_start(root: Path, now: float) -> float:
    """When the first stage that ran with this one began: the earliest start recorded under
    .cache/runtime/times/ by the same launching process (one `dvc repro`); `now` if none."""
    me = launcher()
    starts = [t["started"] for t in map(read_json, sorted((root / TIMES_DIR).glob("*.json"))) if t.get("launcher") == me]
    return min([now, *starts])


def logs_model(params: LogParams, root: Path) -> bool:
    """Whether this run copies the weights into MLflow (see LogParams.log_model)."""
    queued = workspace_root(root) != root.resolve()  # a queued or --temp experiment's throw-away copy
    return params.log_model == "all" or (params.log_model == "workspace" and not queued)


def log_files(root: Path, full: dict[str, Any], pipeline: dict[str, Any], test: dict[str, Any]) -> None:
    """The active run's artifacts: metrics, plots, params, dvc.lock, pipeline.json and the model card."""
    import mlflow

    from stages.mlflow_model import model_card

    for path in sorted((root / "metrics").glob("*.json")):
        mlflow.log_artifact(str(path), "metrics")
    mlflow.log_artifacts(str(root / "plots"), "plots")
    for name in ("params.yaml", "dvc.lock", "models/train/pipeline.json"):
        if (root / name).exists():
            mlflow.log_artifact(str(root / name))
    mlflow.log_text(model_card(flatten(full), pipeline, test), "model_card.md")


def _log_run(params: LogParams, root: Path, tracking_uri: str) -> dict:
    import mlflow

    from stages.mlflow_model import DATASETS, log_classifier, log_datasets

    started = pipeline_start(root, time.time())
    full = read_params(root / "params.yaml")
    pipeline, history = read_json(root / "models/train/pipeline.json"), read_json(root / "plots/train/history.json")
    stage_metrics = {stage: read_json(root / f"metrics/{stage}.json")
                     for stage in ("prepare", "tokenizer", "pretrain", "augment", "alpha", "train")}
    test = read_json(root / "metrics/evaluate.json")
    metrics = numeric_metrics({"test": test, **stage_metrics})
    runtime_metrics, runtime_tags = runtime_facts(root)
    mlflow.set_tracking_uri(tracking_uri)
    experiment = ensure_experiment(params.experiment_name, tracking_uri)
    data_source = str(flatten(full).get("data.source", "unknown"))
    tags = lineage_tags(root, data_source)
    # Named like the row of `dvc exp show` it belongs to, so MLflow's compare view lines up with it;
    # started when the pipeline did, so the runs table's Duration is the pipeline's (it ends with this stage).
    client = mlflow.tracking.MlflowClient()
    created = client.create_run(experiment.experiment_id, start_time=int(started * 1000),
                                tags={**tags, **runtime_tags}, run_name=run_name(tags))
    with mlflow.start_run(run_id=created.info.run_id) as active:
        mlflow.log_params({metric_key(k): v for k, v in flatten(full).items()})
        mlflow.log_metrics({**metrics, **runtime_metrics})
        client.log_batch(active.info.run_id, metrics=history_metrics(history))
        digests = log_datasets(root, data_source)
        log_files(root, full, pipeline, test)
        version = None
        if logs_model(params, root):
            with open(root / DATASETS["test"][0], encoding="utf-8") as f:
                example = [json.loads(line)["text"] for line in itertools.islice(f, 2)]
            info = log_classifier(root / "models/train", pipeline["labels"], example, full["evaluate"]["batch_size"],
                                  params.registered_model, {k: tags[k] for k in ("git.commit", "dvc.lock.sha256")})
            version = info.registered_model_version
    print(f"log: {len(flatten(full))} params, {len(metrics)} metrics, {len(history)} epochs of curves, "
          f"{len(digests)} datasets, model {'version ' + str(version) if version else 'not logged (log.log_model)'}")
    write_json(root / LOGGED, {"experiment": params.experiment_name, "datasets": digests,
                               "registered_model": params.registered_model if version else None})
    return {"run_id": active.info.run_id, "experiment_id": experiment.experiment_id, "model_version": version}


def run(params: LogParams, root: Path = ROOT, tracking_uri: str | None = None) -> dict:
    """Log the pipeline under `root` to MLflow; returns the run id, experiment id, model version and store URI."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    check_inputs(root)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workspace_root(root) / 'mlflow.db'}"
    check_server(uri, root)
    result = log_run(params, root, uri)
    print(f"log: MLflow run {result['run_id']} in experiment '{params.experiment_name}'\n"
          + ui_links(uri, result["experiment_id"], result["run_id"]))
    return {**result, "tracking_uri": uri}


def main() -> None:
    run(load_section(LogParams, "log"))


if __name__ == "__main__":
    cli("log", main)

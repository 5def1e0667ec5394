"""The MLflow tracking store as the log stage uses it: where a sqlite store keeps its artifacts, a lock
so that runs logging at once take turns on it, the experiment (opening on its runs table), a fast
failure when a tracking server does not answer, and the links that open a run.

Used by: stages/log.py.
"""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from filelock import FileLock

from stages.common import workspace_root

# MLflow 3's UI opens an experiment with this tag on its runs table, not on the GenAI traces view.
EXPERIMENT_KIND = "mlflow.experimentKind"


def artifact_location(tracking_uri: str) -> str | None:
    """Keep a local sqlite store's artifacts beside it (MLflow's default is ./mlruns of the cwd)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None  # a server or other backend decides where artifacts go
    return (Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()


def store_lock(tracking_uri: str):
    """An inter-process lock beside a sqlite store (two runs logging at once would hit
    "database is locked"); a no-op for servers, which serialise writes themselves."""
    if not tracking_uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    return FileLock(tracking_uri.removeprefix("sqlite:///") + ".lock", timeout=600)


def ensure_experiment(name: str, tracking_uri: str) -> Any:
    """The MLflow experiment `name`, created with its artifacts beside a sqlite store, tagged to open on its runs."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        mlflow.create_experiment(name, artifact_location=artifact_location(tracking_uri),
                                 tags={EXPERIMENT_KIND: "custom_model_development"})
    elif EXPERIMENT_KIND not in experiment.tags:
        mlflow.tracking.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND,
                                                          "custom_model_development")
    return mlflow.set_experiment(name)


def ui_links(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """How to open the run: MLflow 3 opens an experiment on its traces view; its runs table is #/.../runs."""
    if tracking_uri.startswith(("http://", "https://")):
        base, start = tracking_uri.rstrip("/"), ""
    else:
        base, start = "http://127.0.0.1:5000", f"mlflow ui --backend-store-uri {tracking_uri}, then open "
    return (f"view it: {start}{base}/#/experiments/{experiment_id}/runs/{run_id}\n"
            f"all runs (the runs table): {base}/#/experiments/{experiment_id}/runs")


def check_server(uri: str, root: Path, timeout: float = 10.0) -> None:
    """Fail fast, naming the URI and the fallback, when an HTTP tracking server does not answer.

    MLflow's own client retries for minutes; a stage that hangs that long looks broken.
    """
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout)
    except urllib.error.HTTPError:
        return  # it answered (auth, no /health route, ...): a server is there
    except (OSError, ValueError) as err:
        raise ConnectionError(
            f"log: cannot reach the MLflow tracking server at MLFLOW_TRACKING_URI={uri} ({err}). Start it or fix "
            f"the URI; or log to the local store instead: `unset MLFLOW_TRACKING_URI && dvc repro log` "
            f"(sqlite:///{workspace_root(root) / 'mlflow.db'}). The outputs of the earlier stages are kept."
        ) from err

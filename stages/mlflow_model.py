"""The trained classifier as an MLflow model: a pyfunc that applies the pipeline's own tokenization.

`mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"text": [...]}))` returns one row per text:
`predicted` (the label) and `prob_<label>` per class, the same numbers `evaluate` computes
(stages/classifier.py does the work for both: model.max_length and model.truncation from the
model dir's pipeline.json, batches of evaluate.batch_size). The model carries the models/train
dir as an artifact and this package's code (code_paths), so it loads and serves outside the
repository too: `mlflow models predict -m models:/<name>/<version> -i texts.csv -t csv --env-manager local`,
`mlflow models serve -m ... --env-manager local`.

Also the data it was made from, as the run's dataset inputs (log_datasets). Used by stages/log.py
(log + register) and tools/predict.py (an MLflow model URI instead of a dir).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from stages.classifier import Classifier, clean_texts, prob_columns

# The run's dataset inputs: name -> (file, MLflow context). train is what the model was fitted on.
DATASETS = {"train": ("data/augment/train.jsonl", "training"), "val": ("data/prepare/val.jsonl", "validation"),
            "test": ("data/prepare/test.jsonl", "testing")}
TEXT = "text"  # the input column of the MLflow model
# What loading and serving the model imports; pinned to the versions that trained and logged it.
REQUIREMENTS = ("mlflow", "torch", "transformers", "tokenizers", "sentencepiece", "protobuf", "numpy", "pandas",
                "pyyaml", "psutil")


def predictions_frame(probs: np.ndarray, labels: list[str]) -> pd.DataFrame:
    """`predicted` (argmax label) and one `prob_<label>` column per class."""
    frame = pd.DataFrame(probs, columns=prob_columns(labels))
    frame.insert(0, "predicted", [labels[k] for k in probs.argmax(axis=1)])
    return frame


def model_card(flat: dict[str, Any], pipeline: dict[str, Any], test: dict[str, Any]) -> str:
    """A short markdown summary of what was trained on what, and how it scored (`flat`: the dotted params)."""
    keys = ["model.max_length", "tokenizer.mode", "augment.enabled", "alpha.method", "loss.gamma",
            "loss.label_smoothing", "train.max_epochs", "train.learning_rate", "train.swa.enabled", "seed"]
    lines = [
        f"# Model card: {pipeline['model']['name']}", "",
        f"- Labels: {', '.join(pipeline['labels'])}",
        f"- Data source: {flat.get('data.source', 'unknown')}",
        f"- Kept model: {pipeline.get('kept', 'unknown')} (of best-validation checkpoint / SWA average)", "",
        "## Key params", "", *[f"- `{k}`: {flat[k]}" for k in keys if k in flat], "",
        f"## Test metrics (n={test.get('n_test')})", "", "| metric | value |", "|---|---|",
        *[f"| {k} | {test[k]:.4f} |" for k in ("accuracy", "macro_f1", "weighted_f1", "ece", "ce_loss") if k in test],
        "", "| class | precision | recall | f1 | support |", "|---|---|---|---|---|",
        *[f"| {c} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |"
          for c, m in test.get("per_class", {}).items()],
    ]
    return "\n".join(lines) + "\n"


class TextClassifierModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of stages.classifier.Classifier; input: a DataFrame with a `text` column."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size  # evaluate.batch_size: the same batches, so the same numbers

    def load_context(self, context: Any) -> None:
        self.classifier = Classifier.load(Path(context.artifacts["model_dir"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if isinstance(model_input, pd.DataFrame):
            if TEXT not in model_input.columns:
                raise ValueError(f"input has no column '{TEXT}'; columns found: {list(model_input.columns)}")
            texts = model_input[TEXT]
        else:  # a list of strings
            texts = model_input
        texts = clean_texts(texts, "model input")
        return predictions_frame(self.classifier.predict_proba(texts, self.batch_size), self.classifier.labels)


def signature(labels: list[str]) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = [ColSpec("string", "predicted"), *(ColSpec("double", c) for c in prob_columns(labels))]
    return ModelSignature(inputs=Schema([ColSpec("string", TEXT)]), outputs=Schema(outputs))


def requirements() -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in REQUIREMENTS]


def log_classifier(model_dir: Path, labels: list[str], example: list[str], batch_size: int,
                   registered_model: str | None, tags: dict[str, str]) -> Any:
    """Log `model_dir` as the active run's pyfunc model `model` (copying its weights to the artifact
    store), registered as a new version of `registered_model` (None: not registered) whose tags are
    `tags` (git commit, dvc.lock hash). Returns MLflow's ModelInfo."""
    info = mlflow.pyfunc.log_model(
        name="model", python_model=TextClassifierModel(batch_size), artifacts={"model_dir": str(model_dir)},
        code_paths=[str(Path(__file__).resolve().parent)],  # the stages package: loads outside the repo
        signature=signature(labels), input_example=pd.DataFrame({TEXT: example}),
        pip_requirements=requirements(),
        registered_model_name=registered_model, tags=tags)
    if registered_model:
        client = mlflow.tracking.MlflowClient()
        for key, value in tags.items():
            client.set_model_version_tag(registered_model, info.registered_model_version, key, value)
    return info


def file_md5(path: Path) -> str:
    """md5 of the file's bytes, as dvc.lock records it (the dataset digest in MLflow)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def log_datasets(root: Path, data_source: str) -> dict[str, str]:
    """The splits as the active run's dataset inputs (runs table: Dataset column); returns name -> digest."""
    import mlflow
    import pandas as pd

    digests = {}
    for name, (rel, context) in DATASETS.items():
        path = root / rel
        digests[name] = file_md5(path)
        frame = pd.read_json(path, lines=True, dtype={"id": str, "text": str, "label": str})
        with warnings.catch_warnings():  # "source can be interpreted in multiple ways": both are local files
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(frame, source=str(path), targets="label", name=name, digest=digests[name])
        mlflow.log_input(dataset, context=context, tags={"data.source": data_source, "path": rel})
    return digests


def load(uri: str) -> Classifier:
    """The Classifier inside an MLflow model logged by log_classifier (`models:/name/1`, `runs:/<id>/model`, a dir)."""
    model = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    # By name, not isinstance: MLflow imports the model's own copy of this package (code_paths).
    if type(model).__name__ != TextClassifierModel.__name__:
        raise ValueError(f"{uri} is a {type(model).__name__}, not this pipeline's text classifier (stages.mlflow_model)")
    return model.classifier

"""The trained classifier as one object: load a models/train dir once, give class probabilities of texts.

Shared by `evaluate` (test and validation scores), the MLflow model (stages/mlflow_model.py) and
batch predictions (tools/predict.py), so all three cut texts the same way (`model.max_length` and
`model.truncation` from the dir's pipeline.json, as in training), batch them the same way and
compute the same softmax and temperature: the same texts give the same probabilities from every entry point.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from stages.calibration import apply_temperature
from stages.common import read_json
from stages.text import clean_text, tokenize
from stages.ordinal import order_ids, use_corn_head


def clean_texts(texts: Iterable[Any], where: str, first_row: int = 1) -> list[str]:
    """`texts` cleaned as prepare cleans training texts (stages/text.py), failing on the first one
    that is not a string or is blank (rows numbered from `first_row`)."""
    cleaned = []
    for n, text in enumerate(texts, first_row):
        if not isinstance(text, str) or not (text := clean_text(text)):
            raise ValueError(f"{where}: row {n} has {'a blank text' if isinstance(text, str) else f'text {text!r}'}; "
                             "every row needs a non-empty text: fix or remove it")
        cleaned.append(text)
    return cleaned


@dataclass(frozen=True)
class Classifier:
    """One model, or the fold models of a cross-fitted run (pipeline.json "members"), whose class
    probabilities are averaged."""
    tokenizer: Any
    models: tuple[Any, ...]
    labels: list[str]
    max_length: int
    truncation: str  # head | head_tail, see stages/text.py
    device: str
    temperature: float = 1.0  # train's temperature scaling (pipeline.json; stages/calibration.py), 1: none

    @classmethod
    def load(cls, model_dir: Path, device: str | None = None) -> "Classifier":
        """Model, tokenizer and pipeline.json of a models/train dir; CUDA when available unless `device`."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model_dir = Path(model_dir)
        if not (model_dir / "pipeline.json").is_file():
            raise FileNotFoundError(f"{model_dir / 'pipeline.json'} is missing: {model_dir} is not a trained model "
                                    "dir (run `dvc repro train`, or `dvc pull models/train`)")
        pipeline = read_json(model_dir / "pipeline.json")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        models = []
        for member in [model_dir / m for m in pipeline.get("members", [])] or [model_dir]:
            # safetensors only: a pickled .bin from an untrusted dir could run code on load
            model = AutoModelForSequenceClassification.from_pretrained(member, use_safetensors=True)
            if model.config.num_labels != len(pipeline["labels"]):
                raise ValueError(f"{member}: model has {model.config.num_labels} classes, pipeline.json lists "
                                 f"{len(pipeline['labels'])}: re-run the train stage")
            if order := pipeline.get("loss", {}).get("ordinal"):  # the CORN head it was trained with
                use_corn_head(model, order_ids(order, pipeline["labels"], f"{model_dir / 'pipeline.json'} loss.ordinal"))
            models.append(model.to(device).eval())
        return cls(tokenizer, tuple(models), list(pipeline["labels"]), int(pipeline["model"]["max_length"]),
                   pipeline["model"]["truncation"], device, float(pipeline.get("temperature", 1.0)))

    def predict_proba(self, texts: list[str], batch_size: int, progress: str | None = None) -> np.ndarray:
        """Class probabilities (n, k): float64 softmax of fp32 logits, in the order of `texts`; the mean
        over the models of a cross-fitted run, scaled by `temperature`.

        Texts of similar length share a batch (less padding, same logits: the attention mask).
        `progress`: a tqdm bar with this description, one step per batch."""
        import torch
        from tqdm.auto import tqdm

        order = np.argsort([len(t) for t in texts], kind="stable")
        logits = np.empty((len(self.models), len(texts), len(self.labels)), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        with torch.inference_mode():
            for start in tqdm(starts, desc=progress, unit="batch", disable=progress is None):
                idx = order[start : start + batch_size]
                enc = tokenize(self.tokenizer, [texts[i] for i in idx], self.max_length, self.truncation)
                enc = self.tokenizer.pad(enc, return_tensors="pt").to(self.device)
                for m, model in enumerate(self.models):
                    logits[m, idx] = model(**enc).logits.float().cpu().numpy()
        return apply_temperature(np.mean([softmax(z) for z in logits], axis=0), self.temperature)


def softmax(logits: np.ndarray) -> np.ndarray:
    """float64 softmax over the last axis of fp32 logits (train's held-out scores use it too)."""
    z = np.asarray(logits, dtype=np.float32).astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)


def prob_columns(labels: list[str]) -> list[str]:
    """Output column names of the per-class probabilities: `prob_<label>`."""
    return [f"prob_{label}" for label in labels]

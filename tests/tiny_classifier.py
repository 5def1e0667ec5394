"""A models/train dir as the train stage leaves it, around a tiny random BERT (tests/tiny_bert.py)."""

from __future__ import annotations

from pathlib import Path

from stages.common import write_json, write_jsonl
from tiny_bert import build_tiny_bert

LABELS = ["negative", "neutral", "positive"]
TEXTS = [
    "awful headache and nausea after two days", "it was okay, mild effects", "great relief, I felt calm",
    "terrible pain, worse than before", "average, sometimes fine", "wonderful, it helped a lot",
    "dizzy", "unsure about it, moderate results overall and some days fine, others not", "happy",
    "the drug was awful and i felt worse after days of pain", "fine", "better",
]


def build_model_dir(out_dir: Path, max_length: int = 16, truncation: str = "head") -> Path:
    """Tiny BERT + tokenizer + pipeline.json (labels, model.max_length/truncation) in `out_dir`. Its weights
    are scaled up so that texts get clearly different probabilities and predicted labels (a random
    BERT gives ~1/3 each), which makes a mix-up of rows or an order change visible."""
    import torch
    from transformers import BertForSequenceClassification

    build_tiny_bert(out_dir, TEXTS, num_labels=len(LABELS))
    model = BertForSequenceClassification.from_pretrained(out_dir)
    rng = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in (p for p in model.parameters() if p.dim() == 2):
            weight.normal_(0.0, 0.5, generator=rng)
    model.save_pretrained(out_dir)
    write_json(out_dir / "pipeline.json", {"seed": 0, "labels": LABELS, "kept": "best", "loss": {}, "train": {},
                                          "model": {"name": "tiny", "max_length": max_length, "truncation": truncation}})
    write_heldout(out_dir, split_rows(TEXTS))  # as if it was validated on write_split's rows
    return out_dir


def split_rows(texts: list[str]) -> list[dict]:
    return [{"id": f"test-{i:06d}", "text": t, "label": LABELS[i % 3]} for i, t in enumerate(texts)]


def write_heldout(model_dir: Path, rows: list[dict]) -> None:
    """heldout.json as the train stage writes it: the model's probabilities on the rows it held out."""
    from stages.classifier import Classifier

    probs = Classifier.load(model_dir, device="cpu").predict_proba([r["text"] for r in rows], batch_size=4)
    write_json(model_dir / "heldout.json", {"what": "validation", "rows": len(rows), "ids": [r["id"] for r in rows],
                                            "labels": [r["label"] for r in rows], "probs": probs.tolist()})


def write_split(path: Path, texts: list[str] = TEXTS) -> Path:
    """A prepare-format split: {"id", "text", "label"} per line."""
    write_jsonl(path, split_rows(texts))
    return path

"""Per-class focal-loss weights (alpha) from the class counts of the augmented train set.

Methods:
- inverse: alpha_c proportional to 1 / share_c, normalised to sum to 1 (the seed recipe).
- effective_number: Cui et al. 2019, alpha_c proportional to (1 - beta) / (1 - beta^n_c),
  normalised to sum to 1; beta -> 0 gives uniform weights, beta -> 1 gives `inverse`.
- none: all ones (plain focal loss / cross-entropy).

The train set is read line by line: only the per-class counts are kept.

Inputs:  data/augment/train.jsonl, data/prepare/labels.json
Outputs: data/alpha/alpha.json (list in label order), metrics/alpha.json (per-class)
Params:  alpha
Run:     python -m stages.alpha
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Iterable, Literal

from stages import common
from stages.cli import cli


@dataclass(frozen=True)
class AlphaParams:
    method: Literal["inverse", "effective_number", "none"]
    beta: Annotated[float, common.Range(0, 1, high_open=True, why="1 would weight every class equally by 0/0")]

    def __post_init__(self) -> None:
        common.check_ranges(self, "alpha")


def compute_alpha(counts: list[int], method: str, beta: float = 0.999) -> list[float]:
    """Class weights in label order for `counts` (one count per class, all > 0)."""
    if any(n <= 0 for n in counts):
        raise ValueError(f"every class needs at least one training example, got counts {counts}")
    if method == "none":
        return [1.0] * len(counts)
    if method == "inverse":
        total = sum(counts)
        raw = [total / n for n in counts]
    elif method == "effective_number":
        raw = [(1.0 - beta) / (1.0 - beta**n) for n in counts]
    else:
        raise ValueError(f"unknown alpha.method {method!r}")
    norm = sum(raw)
    return [w / norm for w in raw]


def class_counts(rows: Iterable[dict], labels: list[str]) -> list[int]:
    """Rows per label, in `labels` order, counted row by row (a stream of rows is never held); unknown labels
    are an error."""
    counts = Counter(r["label"] for r in rows)
    unknown = sorted(set(counts) - set(labels))
    if unknown:
        raise ValueError(f"train rows have labels {unknown} missing from labels.json {labels}")
    return [counts[label] for label in labels]


def run(
    params: AlphaParams,
    train_path: Path = common.ROOT / "data/augment/train.jsonl",
    labels_path: Path = common.ROOT / "data/prepare/labels.json",
    out_dir: Path = common.ROOT / "data/alpha",
    metrics_path: Path = common.ROOT / "metrics/alpha.json",
) -> dict:
    labels = common.read_json(labels_path)
    counts = class_counts(common.iter_rows(train_path), labels)
    alpha = compute_alpha(counts, params.method, params.beta)
    metrics = {
        "method": params.method,
        "per_class": {lab: {"count": n, "alpha": round(a, 6)} for lab, n, a in zip(labels, counts, alpha)},
        "max_over_min": round(max(alpha) / min(alpha), 4),
    }
    with common.atomic_dir(out_dir) as tmp:
        common.write_json(tmp / "alpha.json", {"labels": labels, "alpha": alpha})
    common.write_json(metrics_path, metrics)
    print(f"alpha ({params.method}) from {sum(counts)} rows: " + ", ".join(f"{k}={v['alpha']:.3f}" for k, v in metrics["per_class"].items()))
    return metrics


def main() -> None:
    run(common.load_section(AlphaParams, "alpha"))


if __name__ == "__main__":
    cli("alpha", main)

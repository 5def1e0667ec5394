"""Multi-class focal loss with per-example alpha and label smoothing that stays label smoothing.

With soft targets q = (1 - eps) * onehot(y) + eps / C and probabilities p = softmax(z):

    loss_i = alpha_{y_i} * sum_c |q_ic - p_ic|^gamma * (-q_ic * log p_ic)
    batch  = sum_i loss_i / sum_i alpha_{y_i}        (or / `normalizer`, see below)

- eps = 0: the modulating factor is (1 - p_y)^gamma on the true class and the loss is the
  focal loss of Lin et al. (2017), "Focal Loss for Dense Object Detection".
- eps > 0: the factor |q - p|^gamma is the one Li et al. (2020), "Generalized Focal Loss"
  (Quality Focal Loss), use for soft targets. Every term is >= 0 and all vanish only at
  p = q, so the per-example optimum is the smoothed target for every gamma (a factor
  (1 - p_c)^gamma on every component would move it: to p_y = 0.715 at gamma 2, eps 0.1).
- gamma = 0: smoothed cross-entropy weighted by alpha of the true class. With eps = 0 it
  equals `F.cross_entropy(weight=alpha)`; with uniform alpha, `F.cross_entropy(label_smoothing=eps)`.
  (PyTorch weights the smoothing term of class c by alpha_c instead, which again moves the
  optimum away from q; here alpha only weights whole examples.)

`1 - p_y` is computed as `-expm1(log p_y)`, and |q - p| is clamped at 1e-6 before the power,
so confident logits give finite gradients for any gamma >= 0.

For 0 < gamma < 1, |q - p|^gamma has a cusp at p = q: its slope gamma |q - p|^(gamma - 1) grows
without bound as p nears the target (|dL/dz| about 200 near the optimum at gamma 0.1, 3 classes,
eps 0.1), so an example that is almost fitted gets the largest gradient of the batch. There the
factor is (|q - p|^2 + delta^2)^(gamma / 2) with delta = CUSP_DELTA = 1e-3: smooth with slope 0
at p = q, so p = q stays the optimum, and |dL/dz| stays below 0.3 near it (the same example). It
is within a factor 1 + gamma delta^2 / (2 |q - p|^2) of |q - p|^gamma: 0.5% at most once
|q - p| >= 0.01. gamma = 0 (the default) and gamma >= 1 have no cusp and keep |q - p|^gamma as is.

`normalizer` lets the Trainer divide by the alpha mass of the whole accumulated batch, so
gradient accumulation gives the same update as one large batch.

Used by: stages/train.py (params section `loss`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F

from stages.common import Range, check_ranges

GAP_FLOOR = 1e-6  # |q - p| floor before the power (gamma = 0 and gamma >= 1)
CUSP_DELTA = 1e-3  # 0 < gamma < 1: |q - p| is smoothed as sqrt(|q - p|^2 + delta^2), see the docstring


@dataclass(frozen=True)
class LossParams:
    gamma: Annotated[float, Range(0)]
    label_smoothing: Annotated[float, Range(0, 1, high_open=True, why="1 would make every target uniform")]
    # null: a softmax head. A list of every label, lowest rank first: the CORN ordinal head (stages/ordinal.py)
    ordinal: list[str] | None

    def __post_init__(self) -> None:
        check_ranges(self, "loss")


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot targets mixed with the uniform distribution: (1 - eps) * onehot + eps / C."""
    onehot = F.one_hot(labels, num_classes).float()
    return onehot * (1.0 - smoothing) + smoothing / num_classes


def focal_terms(logits: torch.Tensor, labels: torch.Tensor, gamma: float, label_smoothing: float) -> torch.Tensor:
    """Per-example focal loss before alpha: sum_c |q_c - p_c|^gamma * (-q_c log p_c), float32."""
    logits = logits.float()
    num_classes = logits.shape[-1]
    log_p = F.log_softmax(logits, dim=-1)
    targets = soft_targets(labels, num_classes, label_smoothing)
    true_class = F.one_hot(labels, num_classes).bool()
    # q - p; on the true class as (1 - p) - (1 - q), exact as p -> 1 where q - p would cancel.
    gap = torch.where(true_class, -torch.expm1(log_p) - (1.0 - targets), targets - log_p.exp())
    return -(targets * modulating_factor(gap, gamma) * log_p).sum(dim=-1)


def modulating_factor(gap: torch.Tensor, gamma: float) -> torch.Tensor:
    """|gap|^gamma; for 0 < gamma < 1, where that has a cusp at gap = 0, (gap^2 + delta^2)^(gamma / 2)."""
    if 0 < gamma < 1:
        return (gap.square() + CUSP_DELTA**2).pow(gamma / 2)
    return gap.abs().clamp_min(GAP_FLOOR).pow(gamma)


def focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: torch.Tensor | None = None,
    gamma: float = 2.0,
    label_smoothing: float = 0.0,
    normalizer: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Alpha-weighted mean focal loss of a batch (sum / `normalizer` when given)."""
    if alpha is None:
        alpha = torch.ones(logits.shape[-1], device=logits.device)
    weights = alpha.to(device=logits.device, dtype=torch.float32)[labels]
    total = (weights * focal_terms(logits, labels, gamma, label_smoothing)).sum()
    return total / (weights.sum() if normalizer is None else normalizer)

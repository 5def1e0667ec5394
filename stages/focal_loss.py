"""Multi-class focal loss with per-class alpha and label smoothing (soft targets).

    loss_i = -sum_c alpha_c * q_ic * (1 - p_ic)^gamma * log p_ic,   q = (1-eps) * onehot + eps / C

and the batch loss is sum_i loss_i / sum_i alpha_{y_i}: the same weighted mean that
`torch.nn.functional.cross_entropy(weight=alpha, label_smoothing=eps)` uses, so with
gamma = 0 this *is* weighted (smoothed) cross-entropy, and with uniform alpha it is
plain cross-entropy. Smoothing lives here because the Trainer's own
`label_smoothing_factor` is skipped once `compute_loss` is overridden.

Used by: stages/train.py (params section `loss`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossParams:
    gamma: float
    label_smoothing: float

    def __post_init__(self) -> None:
        if self.gamma < 0:
            raise ValueError(f"loss.gamma must be >= 0, got {self.gamma}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"loss.label_smoothing must be in [0, 1), got {self.label_smoothing}")


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot targets mixed with the uniform distribution: (1 - eps) * onehot + eps / C."""
    onehot = F.one_hot(labels, num_classes).float()
    return onehot * (1.0 - smoothing) + smoothing / num_classes


def focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: torch.Tensor | None = None,
    gamma: float = 2.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean focal loss of a batch; logits are cast to float32 so AMP never underflows it."""
    logits = logits.float()
    num_classes = logits.shape[-1]
    if alpha is None:
        alpha = torch.ones(num_classes, device=logits.device)
    alpha = alpha.to(device=logits.device, dtype=torch.float32)
    log_p = F.log_softmax(logits, dim=-1)
    modulating = (1.0 - log_p.exp()).pow(gamma)
    targets = soft_targets(labels, num_classes, label_smoothing)
    per_example = -(alpha * targets * modulating * log_p).sum(dim=-1)
    return per_example.sum() / alpha[labels].sum()

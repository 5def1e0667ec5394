"""An ordinal head for ordered labels (`loss.ordinal: [negative, neutral, positive]`): CORN.

CORN (Shi et al. 2021, "Deep neural networks for rank-consistent ordinal regression based on
conditional probabilities") predicts, for ranks r = 0 .. C-1 in the given order, C - 1 conditional
probabilities s_k = P(y > k | y >= k) = sigmoid(z_k). The class probabilities follow:

    P(y = r) = s_0 * ... * s_{r-1} * (1 - s_r)      (no (1 - s) factor for the top rank),

so P(y > k) = s_0 * ... * s_k falls with k (rank-consistent) and the C probabilities sum to 1.
`CornLinear` replaces the model's last linear layer (same weights, same state-dict keys, so
checkpoints, `save_pretrained` and loading are unchanged) and returns log P(y = class) in the model's
label order instead of free logits. Everything downstream (the focal loss, softmax, argmax, the
MLflow model) then works on a proper distribution: softmax of log-probabilities is the identity.

With gamma 0 and no smoothing the loss -log P(y = r) equals CORN's: the sum over tasks k <= r of
its binary cross-entropies telescopes to it (CORN divides by the summed task sizes, a constant
the alpha-mass normaliser replaces). The head keeps C outputs so that every loader still sees C
classes; the ranks read the first C - 1, the last output is unused.

Used by: stages/fit.py (training), stages/classifier.py (loading a trained model).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def rank_log_probs(task_logits: torch.Tensor) -> torch.Tensor:
    """log P(y = r) for r = 0..C-1 from C-1 conditional logits z_k (last axis), in rank order."""
    log_s, log_not = F.logsigmoid(task_logits), F.logsigmoid(-task_logits)
    zeros = torch.zeros_like(task_logits[..., :1])
    log_at_least = torch.cat([zeros, log_s.cumsum(-1)], dim=-1)  # log P(y >= r), r = 0..C-1
    return log_at_least + torch.cat([log_not, zeros], dim=-1)


class CornLinear(nn.Linear):
    """nn.Linear whose outputs are log class probabilities of the CORN model; `order[r]` is the
    model's label id of rank r."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = super().forward(x)
        ranks = rank_log_probs(z[..., : self.out_features - 1])
        return ranks[..., self.inverse]

    def set_order(self, order: list[int]) -> "CornLinear":
        if sorted(order) != list(range(self.out_features)):
            raise ValueError(f"an ordinal order must list each of the {self.out_features} label ids once, got {order}")
        # output column j (label id j) reads rank inverse[j]
        self.register_buffer("inverse", torch.tensor([order.index(j) for j in range(len(order))], device=self.weight.device),
                             persistent=False)
        return self


def order_ids(order: list[str], labels: list[str], where: str) -> list[int]:
    """Label ids in rank order; fails naming both lists when they hold different labels."""
    if sorted(order) != sorted(labels) or len(set(order)) != len(order):
        raise ValueError(f"{where} lists {order} but the labels are {labels}: give each label once, lowest rank first "
                         "(or null for an unordered softmax head)")
    return [labels.index(label) for label in order]


def replace_head(model: nn.Module, make: Callable[[nn.Linear], nn.Linear]) -> nn.Module:
    """Swap the classification head (the last nn.Linear with one output per class) for `make(head)`,
    loaded with the head's weights; `model` itself is returned, changed in place."""
    n = model.config.num_labels
    name = [k for k, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == n][-1]
    parent, _, attr = name.rpartition(".")
    old = model.get_submodule(name)
    new = make(old)
    new.load_state_dict(old.state_dict())
    setattr(model.get_submodule(parent) if parent else model, attr, new)
    return model


def use_corn_head(model: nn.Module, order: list[int]) -> nn.Module:
    """The classification head as a CornLinear with the same weights (replace_head)."""
    return replace_head(model, lambda old: CornLinear(
        old.in_features, old.out_features, bias=old.bias is not None, device=old.weight.device,
        dtype=old.weight.dtype).set_order(order))

import math

import pytest
import torch
import torch.nn.functional as F

from stages.focal_loss import LossParams, focal_loss, soft_targets


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 4, generator=g) * 3, torch.tensor([0, 1, 2, 3, 1, 1, 0, 2])


def test_focal_equals_ce_when_gamma_zero_and_alpha_uniform(batch):
    logits, labels = batch
    for alpha in (None, torch.full((4,), 0.25)):
        got = focal_loss(logits, labels, alpha=alpha, gamma=0.0)
        # Same formula, different float32 summation order: equal to rounding (~1 ulp).
        torch.testing.assert_close(got, F.cross_entropy(logits, labels), rtol=1e-6, atol=1e-7)


def test_focal_equals_weighted_smoothed_ce_when_gamma_zero(batch):
    logits, labels = batch
    alpha = torch.tensor([0.1, 0.45, 0.12, 0.33])
    got = focal_loss(logits, labels, alpha=alpha, gamma=0.0, label_smoothing=0.2)
    want = F.cross_entropy(logits, labels, weight=alpha, label_smoothing=0.2)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_focal_matches_hand_computation_with_soft_targets():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    labels = torch.tensor([0])
    alpha = torch.tensor([0.5, 0.3, 0.2])
    gamma, eps = 2.0, 0.3
    z = [math.exp(v) for v in (2.0, 0.0, -1.0)]
    p = [v / sum(z) for v in z]
    q = [1 - eps + eps / 3, eps / 3, eps / 3]
    want = -sum(alpha[c].item() * q[c] * (1 - p[c]) ** gamma * math.log(p[c]) for c in range(3))
    want /= alpha[0].item()
    got = focal_loss(logits, labels, alpha=alpha, gamma=gamma, label_smoothing=eps)
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_focal_down_weights_easy_examples():
    easy = torch.tensor([[6.0, 0.0, 0.0]])
    hard = torch.tensor([[0.5, 0.0, 0.0]])
    y = torch.tensor([0])
    ratio_focal = focal_loss(easy, y, gamma=2.0) / focal_loss(hard, y, gamma=2.0)
    ratio_ce = focal_loss(easy, y, gamma=0.0) / focal_loss(hard, y, gamma=0.0)
    assert ratio_focal < ratio_ce / 10


def test_focal_casts_half_logits_to_float32(batch):
    logits, labels = batch
    got = focal_loss(logits.half(), labels, gamma=2.0)
    assert got.dtype == torch.float32


def test_soft_targets_sum_to_one_and_keep_argmax():
    q = soft_targets(torch.tensor([2, 0]), 5, 0.1)
    assert torch.allclose(q.sum(-1), torch.ones(2))
    assert q[0].argmax() == 2 and q[0, 2].item() == pytest.approx(0.92)


def test_focal_gradient_flows(batch):
    logits, labels = batch
    logits = logits.clone().requires_grad_(True)
    focal_loss(logits, labels, gamma=2.0, label_smoothing=0.1).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs", [{"gamma": -1.0, "label_smoothing": 0.0}, {"gamma": 1.0, "label_smoothing": 1.0}])
def test_loss_params_reject_out_of_range(kwargs):
    with pytest.raises(ValueError, match="loss"):
        LossParams(**kwargs)

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


def test_focal_equals_weighted_ce_when_gamma_zero_without_smoothing(batch):
    logits, labels = batch
    alpha = torch.tensor([0.1, 0.45, 0.12, 0.33])
    got = focal_loss(logits, labels, alpha=alpha, gamma=0.0)
    torch.testing.assert_close(got, F.cross_entropy(logits, labels, weight=alpha), rtol=1e-6, atol=1e-7)


def test_focal_equals_smoothed_ce_when_gamma_zero_and_alpha_uniform(batch):
    logits, labels = batch
    got = focal_loss(logits, labels, gamma=0.0, label_smoothing=0.2)
    torch.testing.assert_close(got, F.cross_entropy(logits, labels, label_smoothing=0.2), rtol=1e-6, atol=1e-7)


def test_alpha_weights_whole_examples_by_their_true_class(batch):
    # PyTorch weights the smoothing term of class c by alpha_c; here alpha_y weights the example.
    logits, labels = batch
    alpha = torch.tensor([0.1, 0.45, 0.12, 0.33])
    per_example = F.cross_entropy(logits, labels, label_smoothing=0.2, reduction="none")
    want = (alpha[labels] * per_example).sum() / alpha[labels].sum()
    got = focal_loss(logits, labels, alpha=alpha, gamma=0.0, label_smoothing=0.2)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_focal_matches_hand_computation_with_soft_targets():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    labels = torch.tensor([0])
    alpha = torch.tensor([0.5, 0.3, 0.2])
    gamma, eps = 2.0, 0.3
    z = [math.exp(v) for v in (2.0, 0.0, -1.0)]
    p = [v / sum(z) for v in z]
    q = [1 - eps + eps / 3, eps / 3, eps / 3]
    want = -sum(q[c] * abs(q[c] - p[c]) ** gamma * math.log(p[c]) for c in range(3))  # alpha_y cancels in the mean
    got = focal_loss(logits, labels, alpha=alpha, gamma=gamma, label_smoothing=eps)
    assert got.item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
def test_optimum_is_the_smoothed_target_for_every_gamma(gamma):
    eps, labels = 0.1, torch.tensor([2])
    logits = torch.zeros(1, 3, requires_grad=True)
    opt = torch.optim.LBFGS([logits], lr=0.5, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = focal_loss(logits, labels, gamma=gamma, label_smoothing=eps)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    p = logits.detach().softmax(-1)[0]
    torch.testing.assert_close(p, soft_targets(labels, 3, eps)[0], atol=2e-3, rtol=0)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("gamma", [0.25, 0.5, 2.0])
def test_gradients_stay_finite_at_confident_logits(gamma, eps):
    logits = torch.tensor([[30.0, 0.0, 0.0], [0.0, -30.0, 30.0]], requires_grad=True)
    loss = focal_loss(logits, torch.tensor([0, 2]), gamma=gamma, label_smoothing=eps)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_normalizer_makes_split_batches_sum_to_the_whole_batch(batch):
    """Gradient accumulation: two halves divided by the whole batch's alpha mass = the whole batch."""
    logits, labels = batch
    alpha = torch.tensor([0.1, 0.45, 0.12, 0.33])
    whole = focal_loss(logits, labels, alpha, 2.0, 0.1)
    mass = alpha[labels].sum()
    halves = sum(focal_loss(logits[s], labels[s], alpha, 2.0, 0.1, normalizer=mass) for s in (slice(0, 3), slice(3, 8)))
    torch.testing.assert_close(halves, whole)
    unnormalized = sum(focal_loss(logits[s], labels[s], alpha, 2.0, 0.1) for s in (slice(0, 3), slice(3, 8))) / 2
    assert not torch.allclose(unnormalized, whole)  # the per-half mean would differ


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

import math

import pytest
import torch
import torch.nn.functional as F

from stages.focal_loss import CUSP_DELTA, LossParams, focal_loss, focal_terms, modulating_factor, soft_targets


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


@pytest.mark.parametrize("gamma", [0.0, 0.1, 0.5, 1.0, 2.0])
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device (CUDA)")
def test_alpha_on_the_cpu_weights_cuda_logits(batch):
    """The Trainer keeps alpha on the CPU while the logits are on the GPU."""
    logits, labels = batch
    alpha = torch.tensor([0.1, 0.45, 0.12, 0.33])
    got = focal_loss(logits.cuda(), labels.cuda(), alpha, 2.0, 0.1)
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), focal_loss(logits, labels, alpha, 2.0, 0.1))


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


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"gamma": -1.0, "label_smoothing": 0.0, "ordinal": None}, r"^loss\.gamma: -1\.0 is out of range"),
    ({"gamma": 1.0, "label_smoothing": 1.0, "ordinal": None}, r"^loss\.label_smoothing: 1\.0 is out of range"),
])
def test_loss_params_reject_out_of_range(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LossParams(**kwargs)


def test_defaults_are_the_focal_loss_of_lin_et_al(batch):
    """gamma 2, no smoothing, uniform alpha: mean over examples of -(1 - p_y)^2 log p_y."""
    logits, labels = batch
    p_y = logits.softmax(-1)[torch.arange(len(labels)), labels]
    torch.testing.assert_close(focal_loss(logits, labels), (-(1 - p_y) ** 2 * p_y.log()).mean())


def test_class_axis_is_the_last_one_for_any_leading_shape(batch):
    logits, labels = batch  # 8 x 4, seen as 2 x 4 x 4 (the class axis last; 4 of its own leading size)
    for alpha in (None, torch.tensor([0.1, 0.45, 0.12, 0.33])):
        flat = focal_loss(logits, labels, alpha, 2.0, 0.1)
        torch.testing.assert_close(focal_loss(logits.reshape(2, 4, 4), labels.reshape(2, 4), alpha, 2.0, 0.1), flat)
    torch.testing.assert_close(focal_loss(logits[:2].reshape(2, 1, 4), labels[:2].reshape(2, 1), None, 2.0, 0.1),
                               focal_loss(logits[:2], labels[:2], None, 2.0, 0.1))


def test_loss_is_float32_for_float64_alpha(batch):
    logits, labels = batch
    assert focal_loss(logits, labels, torch.tensor([0.1, 0.45, 0.12, 0.33], dtype=torch.float64)).dtype == torch.float32


def test_default_gamma_zero_is_exactly_smoothed_cross_entropy(batch):
    """The default (gamma 0) is bit for bit the alpha-free smoothed cross-entropy: no smoothing of |q - p|."""
    logits, labels = batch
    want = -(soft_targets(labels, 4, 0.1) * F.log_softmax(logits, dim=-1)).sum(dim=-1)
    assert torch.equal(focal_terms(logits, labels, 0.0, 0.1), want)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 1.5, 2.0, 5.0])
def test_factor_is_the_plain_power_for_gamma_zero_and_from_one_up(gamma):
    gap = torch.tensor([-0.5, -1e-8, 0.0, 1e-7, 2e-6, 0.3, 1.0])
    assert torch.equal(modulating_factor(gap, gamma), gap.abs().clamp_min(1e-6).pow(gamma))


@pytest.mark.parametrize("gamma", [0.1, 0.5, 0.99])
def test_factor_is_smoothed_at_the_cusp_and_close_to_the_power_away_from_it(gamma):
    assert CUSP_DELTA == 1e-3
    at_target = modulating_factor(torch.tensor([0.0]), gamma).item()
    assert at_target == pytest.approx(1e-3**gamma, rel=1e-6)
    gap = torch.tensor([-0.5, -0.01, 0.01, 0.2, 1.0], dtype=torch.float64)
    factor = modulating_factor(gap, gamma)
    assert (factor > gap.abs() ** gamma).all()
    torch.testing.assert_close(factor, gap.abs() ** gamma, rtol=gamma * 1e-3**2 / (2 * 0.01**2), atol=0)


def _near_target_logits(num_classes: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits log q of the smoothed target of class 0, moved by up to 1e-5 ... 1e-2 in each component."""
    labels = torch.zeros(1, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    steps = torch.cat([torch.randn(500, num_classes, generator=g) * s for s in (1e-5, 1e-4, 1e-3, 1e-2)])
    return soft_targets(labels, num_classes, eps).log() + steps, labels.expand(len(steps))


@pytest.mark.parametrize("gamma", [0.1, 0.5])
def test_gradient_stays_bounded_near_the_target_for_gamma_below_one(gamma):
    """Unsmoothed, |q - p|^gamma gives max |dL/dz| 196 here at gamma 0.1 (4.5 at 0.5); smoothed 0.28 (0.11)."""
    logits, labels = _near_target_logits(3, 0.1)
    logits.requires_grad_(True)
    focal_terms(logits, labels, gamma, 0.1).sum().backward()
    assert logits.grad.abs().max() < 0.5


@pytest.mark.parametrize("gamma", [0.1, 0.5, 2.0])
def test_loss_falls_all_the_way_to_the_target(gamma):
    """On the straight line in logit space from a wrong prediction to log q the loss only decreases."""
    labels, eps = torch.tensor([1]), 0.1
    start, target = torch.tensor([3.0, -1.0, 0.5]), soft_targets(labels, 3, eps).log()
    path = start + torch.linspace(0, 1, 2001)[:, None] * (target - start)
    loss = focal_terms(path, labels.expand(len(path)), gamma, eps)
    assert (loss[1:] < loss[:-1]).all()

"""The CORN ordinal head (loss.ordinal): its distribution, its loss and gradients, its label order, and
a trained model that loads back with the head it was trained with."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stages.classifier import Classifier
from stages.focal_loss import focal_loss
from stages.ordinal import CornLinear, order_ids, rank_log_probs, replace_head, use_corn_head
from stages.train import run
from test_train import LABELS, _params


def test_rank_probabilities_are_a_distribution_and_rank_consistent():
    z = torch.randn(50, 4, dtype=torch.float64) * 3
    p = rank_log_probs(z).exp()
    assert p.shape == (50, 5) and (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(50, dtype=torch.float64))
    # P(y > k) = s_0 * ... * s_k, which can only fall with k
    above = 1 - p.cumsum(-1)[:, :-1]
    torch.testing.assert_close(above, torch.sigmoid(z).cumprod(-1))
    assert (above[:, 1:] <= above[:, :-1] + 1e-12).all()


def corn_loss_paper(task_logits: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """CORN's loss as Shi et al. write it: task k is a binary y > k on the examples with y >= k (sum form)."""
    total = task_logits.new_zeros(())
    for k in range(task_logits.shape[1]):
        on = ranks >= k
        total = total + F.binary_cross_entropy_with_logits(task_logits[on, k], (ranks[on] > k).double(), reduction="sum")
    return total


def test_the_focal_loss_on_the_head_is_corns_loss_with_its_gradients():
    torch.manual_seed(0)
    x, ranks = torch.randn(12, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 2, 1, 0, 2, 2, 1, 0, 0, 2])
    head = CornLinear(6, 3, dtype=torch.float64).set_order([0, 1, 2])
    ours = focal_loss(head(x), ranks, torch.ones(3, dtype=torch.float64), 0.0, 0.0, normalizer=1.0)
    (g_ours,) = torch.autograd.grad(ours, head.weight)
    paper = corn_loss_paper(F.linear(x, head.weight, head.bias)[:, :2], ranks)
    (g_paper,) = torch.autograd.grad(paper, head.weight)
    # the focal loss computes in float32
    torch.testing.assert_close(ours.double(), paper, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_ours, g_paper, rtol=1e-4, atol=1e-6)
    assert g_ours[2].abs().max() == 0  # the unused third output


def test_label_order_maps_ranks_to_label_ids():
    head = CornLinear(2, 3)
    x = torch.randn(5, 2)
    by_rank = rank_log_probs(F.linear(x, head.weight, head.bias)[:, :2])
    # ranks low -> high are label ids 2, 0, 1: label 2 is rank 0, label 0 rank 1, label 1 rank 2
    torch.testing.assert_close(head.set_order([2, 0, 1])(x), by_rank[:, [1, 2, 0]])
    assert order_ids(["positive", "negative", "neutral"], ["negative", "neutral", "positive"], "w") == [2, 0, 1]


@pytest.mark.parametrize("order", [["negative", "positive"], ["negative", "negative", "positive"],
                                   ["negative", "neutral", "good"]])
def test_an_order_that_is_not_every_label_once_fails_with_the_fix(order):
    with pytest.raises(ValueError, match=r"loss.ordinal lists .* but the labels are \['negative', 'neutral', "
                                         r"'positive'\]: give each label once, lowest rank first"):
        order_ids(order, ["negative", "neutral", "positive"], "loss.ordinal")


def test_a_model_trained_with_the_ordinal_head_loads_back_with_it(tiny_root):
    seed, model, loss, train = _params(tiny_root)
    loss = dataclasses.replace(loss, gamma=0.0, ordinal=["neg", "neu", "pos"])
    run(seed, model, loss, train, root=tiny_root)
    assert json.loads((tiny_root / "models/train/pipeline.json").read_text())["loss"]["ordinal"] == LABELS
    loaded = Classifier.load(tiny_root / "models/train", device="cpu")
    head = [m for m in loaded.models[0].modules() if isinstance(m, CornLinear)]
    assert len(head) == 1
    texts = ["great relief wonderful", "awful pain", "okay average"]
    probs = loaded.predict_proba(texts, batch_size=2)
    # the same weights read as a plain softmax head give different probabilities: the head matters
    plain = dataclasses.replace(loaded, models=(use_plain_head(loaded.models[0]),))
    assert not np.allclose(plain.predict_proba(texts, batch_size=2), probs, atol=1e-3)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-12)
    held = json.loads((tiny_root / "models/train/heldout.json").read_text())
    val = Classifier.load(tiny_root / "models/train", device="cpu").predict_proba(
        [r["text"] for r in sorted(_val_rows(tiny_root), key=lambda r: r["id"])], batch_size=4)
    np.testing.assert_allclose(np.array(held["probs"]), val, atol=1e-5)


def test_a_wrong_order_fails_before_training(tiny_root):
    seed, model, loss, train = _params(tiny_root)
    with pytest.raises(ValueError, match=r"loss.ordinal in params.yaml lists \['neg', 'pos'\]"):
        run(seed, model, dataclasses.replace(loss, ordinal=["neg", "pos"]), train, root=tiny_root)
    assert not (tiny_root / "models/train").exists()


def use_plain_head(model):
    """A copy of `model` with its CORN head read as a plain nn.Linear (softmax over raw logits)."""
    import copy

    return replace_head(copy.deepcopy(model), lambda old: torch.nn.Linear(old.in_features, old.out_features))


def _val_rows(root):
    from stages.common import read_rows

    return read_rows(root / "data/prepare/val.jsonl")


@pytest.fixture
def tiny_root(tmp_path):
    from test_train import make_tiny_root

    return make_tiny_root(tmp_path)

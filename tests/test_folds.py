"""Cross-fitting (train.folds > 1): fold plans, paraphrase routing, out-of-fold scores, the ensemble."""

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest
import torch

from stages import common, folds
from stages.classifier import Classifier, softmax
from stages.evaluate import heldout
from stages.metrics import macro_f1
from stages.train import run
from test_train import LABELS, _params, _rows, make_tiny_root


def _reviews(counts: dict[str, int]) -> list[dict]:
    return [{"id": f"{lab}-{i:03d}", "text": f"{lab} {i}", "label": lab} for lab, n in counts.items() for i in range(n)]


def _paraphrases(reviews: list[dict], every: int = 2) -> list[dict]:
    return [{"id": f"{r['id']}-bt1", "text": f"{r['text']} again", "label": r["label"], "source": "backtranslation",
             "orig_id": r["id"]} for r in reviews[::every]]


def test_fold_assignment_is_stratified_and_seeded():
    labels = ["a"] * 50 + ["b"] * 23 + ["c"] * 7
    first = folds.assign_folds(labels, 5, seed=42)
    assert sorted(Counter(first).values()) == [16] * 5  # every row in exactly one fold, sizes equal
    for lab, n in Counter(labels).items():
        per_fold = Counter(f for f, y in zip(first, labels) if y == lab)
        assert set(per_fold) == set(range(5)) and max(per_fold.values()) - min(per_fold.values()) <= 1, lab
    np.testing.assert_array_equal(first, folds.assign_folds(labels, 5, seed=42))
    assert (first != folds.assign_folds(labels, 5, seed=43)).any()


def test_a_class_smaller_than_k_fails_with_the_fix():
    with pytest.raises(ValueError, match=r"train.folds is 3 but class\(es\) \['c'\] have fewer labelled reviews "
                                         r"than that \(c: 2\): every fold needs each class; lower train.folds"):
        folds.assign_folds(["a"] * 9 + ["c"] * 2, 3, seed=1)


def test_paraphrases_never_cross_folds_and_every_review_is_held_out_once():
    train = _reviews({"neg": 12, "neu": 6, "pos": 20})
    val = _reviews({"neg": 3, "neu": 2, "pos": 5})
    val = [{**r, "id": f"val-{r['id']}"} for r in val]
    plan = folds.plan(train + _paraphrases(train), val, 3, seed=7)
    assert [f.name for f in plan] == ["fold-1", "fold-2", "fold-3"]
    held = [r["id"] for f in plan for r in f.heldout]
    assert sorted(held) == sorted(r["id"] for r in train + val)  # each labelled review once, no paraphrase
    for fold in plan:
        held_ids = {r["id"] for r in fold.heldout}
        trained = {r["id"] for r in fold.train}
        assert not held_ids & trained
        # no paraphrase of a held-out review is trained on; every other paraphrase is
        sources = {r["orig_id"] for r in fold.train if folds.is_paraphrase(r)}
        assert not sources & held_ids
        assert sources == {p["orig_id"] for p in _paraphrases(train)} - held_ids


def test_single_fold_keeps_prepares_split():
    train, val = _reviews({"a": 4}), _reviews({"b": 2})
    (only,) = folds.plan(train, val, 1, seed=0)
    assert (only.name, only.train, only.heldout) == ("single", train, val)


def test_a_paraphrase_of_an_unknown_review_fails():
    train = _reviews({"a": 4, "b": 4})
    stray = {**_paraphrases(train)[0], "orig_id": "gone"}
    with pytest.raises(ValueError, match=r"orig_id that is no review of data/prepare: re-run the augment stage"):
        folds.plan(train + [stray], [], 2, seed=0)


def test_a_review_id_in_both_splits_fails():
    train = _reviews({"a": 4, "b": 4})
    with pytest.raises(ValueError, match=r"share review ids: re-run the pipeline from prepare"):
        folds.plan(train, train[:2], 2, seed=0)


def test_out_of_fold_orders_by_id_whatever_the_fold_order():
    plan = [folds.Fold("fold-1", [], [{"id": "b", "label": "x"}]),
            folds.Fold("fold-2", [], [{"id": "a", "label": "y"}, {"id": "c", "label": "x"}])]
    ids, labels, probs = folds.out_of_fold(plan, [np.array([[0.1, 0.9]]), np.array([[0.8, 0.2], [0.3, 0.7]])])
    assert (ids, labels) == (["a", "b", "c"], ["y", "x", "x"])
    np.testing.assert_array_equal(probs, [[0.8, 0.2], [0.1, 0.9], [0.3, 0.7]])


@pytest.fixture(scope="module")
def crossfit(tmp_path_factory):
    """A real 2-fold train run on the tiny BERT, with paraphrases in its train split."""
    root = make_tiny_root(tmp_path_factory.mktemp("crossfit"))
    train = _rows(8, "train")
    common.write_jsonl(root / "data/augment/train.jsonl", train + _paraphrases(train, every=3))
    seed, model, loss, train_params = _params(root, folds=2)
    metrics = run(seed, model, loss, train_params, root=root)
    return root, seed, metrics


def test_out_of_fold_metrics_equal_a_direct_computation_from_the_fold_models(crossfit):
    root, seed, metrics = crossfit
    plan = folds.plan(common.read_rows(root / "data/augment/train.jsonl"),
                      common.read_rows(root / "data/prepare/val.jsonl"), 2, seed)
    pipeline = json.loads((root / "models/train/pipeline.json").read_text())
    assert pipeline["members"] == ["fold-1", "fold-2"] and set(metrics["folds"]) == {"fold-1", "fold-2"}
    ensemble = Classifier.load(root / "models/train", device="cpu")
    ids, ys, probs = [], [], []
    for fold, model in zip(plan, ensemble.models):  # each fold model, loaded from disk, on the reviews it held out
        member = dataclasses.replace(ensemble, models=(model,))
        probs.append(member.predict_proba([r["text"] for r in fold.heldout], batch_size=4))
        ids += [r["id"] for r in fold.heldout]
        ys += [LABELS.index(r["label"]) for r in fold.heldout]
    order = np.argsort(ids)
    probs, y = np.concatenate(probs)[order], np.array(ys)[order]
    assert metrics["heldout"]["what"] == "out-of-fold" and metrics["heldout"]["rows"] == len(y) == 24 + 12
    assert metrics["heldout"]["macro_f1"] == pytest.approx(macro_f1(y, probs.argmax(1), 3), abs=1e-12)
    saved_probs, saved_y, what = heldout(root / "models/train", LABELS)
    np.testing.assert_allclose(saved_probs, probs, atol=1e-5)
    np.testing.assert_array_equal(saved_y, y)
    assert what == "out-of-fold"
    assert metrics["heldout"]["ce_loss"] == pytest.approx(
        -np.log(saved_probs[np.arange(len(y)), y]).mean(), rel=1e-9)


def test_fold_models_differ_and_the_ensemble_averages_their_probabilities(crossfit):
    root, _, _ = crossfit
    ensemble = Classifier.load(root / "models/train", device="cpu")
    assert len(ensemble.models) == 2
    a, b = (dict(m.named_parameters())["classifier.weight"] for m in ensemble.models)
    assert not torch.equal(a, b)
    texts = ["great relief", "awful pain", "okay mild"]
    enc = ensemble.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        want = np.mean([softmax(m(**enc).logits.numpy()) for m in ensemble.models], axis=0)
    np.testing.assert_allclose(ensemble.predict_proba(texts, batch_size=2), want, atol=1e-6)

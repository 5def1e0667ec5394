"""Frozen bottom layers with cached outputs (stages/frozen.py) against recomputing them."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, MPNetConfig, MPNetForSequenceClassification

from stages import common
from stages.frozen import FrozenBottom, collate, pad
from stages.train import run
from stages.trainer import sub_batch_logits
from test_train import _params, make_tiny_root
from tiny_bert import build_tiny_bert

TEXT_IDS = [[2, 7, 9, 11, 3], [2, 5, 3], [2, 8, 8, 8, 8, 8, 9, 10, 3], [2, 6, 7, 3]]


def _tiny_mpnet() -> MPNetForSequenceClassification:
    torch.manual_seed(0)
    config = MPNetConfig(vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32, num_labels=3)
    return MPNetForSequenceClassification(config)


def _tiny_bert(tmp_path) -> torch.nn.Module:
    path = build_tiny_bert(tmp_path / "bert", ["okay fine", "great relief"], num_layers=3)
    return AutoModelForSequenceClassification.from_pretrained(path)


def _full_logits(model, ids):
    batch, mask = pad([torch.tensor(i) for i in ids], 0)
    with torch.no_grad():
        return model(input_ids=batch, attention_mask=mask).logits


@pytest.mark.parametrize("arch", ["bert", "mpnet"])
@pytest.mark.parametrize("n", [1, 2])
def test_top_on_cached_states_equals_full_model(tmp_path, arch, n):
    model = (_tiny_mpnet() if arch == "mpnet" else _tiny_bert(tmp_path)).eval()
    want = _full_logits(model, TEXT_IDS)
    frozen = FrozenBottom(model, n)
    # batch size 3: the texts are cached in other batches (and paddings) than the full pass above
    states = frozen.encode(TEXT_IDS, 3, torch.device("cpu"))
    assert [s.shape[0] for s in states] == [len(i) for i in TEXT_IDS]  # only each text's own positions
    top = frozen.top().eval()
    batch = collate([{"inputs_embeds": s, "labels": 0} for s in states])
    with torch.no_grad():
        got = top(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_full_logits(frozen.full(), TEXT_IDS), want)  # full() restores the model


@pytest.mark.parametrize("arch", ["bert", "mpnet"])
def test_the_cache_stays_valid_after_training_the_top(tmp_path, arch):
    """A step on everything the top trains must leave the frozen part's output unchanged (MPNet shares a
    relative position bias between all its layers: training it would make every cached state stale)."""
    model = _tiny_mpnet() if arch == "mpnet" else _tiny_bert(tmp_path)
    frozen = FrozenBottom(model, 2)
    states = frozen.encode(TEXT_IDS, 4, torch.device("cpu"))
    top = frozen.top().train()
    batch = collate([{"inputs_embeds": s, "labels": i % 3} for i, s in enumerate(states)])
    top(**batch).loss.backward()
    with torch.no_grad():
        for p in top.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad.sign()
    top.eval()
    with torch.no_grad():
        got = top(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, _full_logits(frozen.full().eval(), TEXT_IDS), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("parts", [2, 3, 4, 9])
def test_sub_batches_of_cached_states_give_the_padded_batchs_logits_in_its_order(parts):
    model = _tiny_mpnet().eval()
    frozen = FrozenBottom(model, 1)
    ids = TEXT_IDS + [[2, 9, 3], [2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 3]]
    batch = collate([{"inputs_embeds": s, "labels": 0} for s in frozen.encode(ids, 8, torch.device("cpu"))])
    del batch["labels"]
    top = frozen.top().eval()
    with torch.no_grad():
        want = top(**batch).logits
        got = sub_batch_logits(top, batch, parts)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.equal(got[0], got[1])  # rows differ, so a wrong order would show


def test_a_left_padded_batch_runs_whole():
    """Cutting each part to its longest row assumes real positions come first; otherwise nothing is cut."""
    model = _tiny_mpnet().eval()
    calls = []
    model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs["input_ids"].shape),
                                    with_kwargs=True)
    batch, mask = pad([torch.tensor(i[::-1]) for i in TEXT_IDS], 0)
    batch, mask = batch.flip(1), mask.flip(1)  # the same texts, padded on the left
    with torch.no_grad():
        sub_batch_logits(model, {"input_ids": batch, "attention_mask": mask}, 2)
        assert calls == [batch.shape]
        right, right_mask = pad([torch.tensor(i) for i in TEXT_IDS], 0)
        sub_batch_logits(model, {"input_ids": right, "attention_mask": right_mask}, 2)
    assert calls[1:] == [torch.Size([2, 4]), torch.Size([2, 9])]  # lengths 3, 4 | 5, 9


def test_top_trains_only_unfrozen_parameters(tmp_path):
    model = _tiny_bert(tmp_path)
    frozen = FrozenBottom(model, 2)
    top = frozen.top()
    trainable = {name for name, p in top.named_parameters() if p.requires_grad}
    assert trainable and all("embeddings" not in name for name in trainable)
    assert {name.split(".")[3] for name in trainable if ".layer." in name} == {"0"}  # the third layer, renumbered
    full = {name for name, p in frozen.full().named_parameters() if p.requires_grad}
    assert {name.split(".")[3] for name in full if ".layer." in name} == {"2"}


def test_freeze_all_layers_fails_with_the_limit(tmp_path):
    with pytest.raises(common.ParamsError, match="at most 2 can be frozen"):
        FrozenBottom(_tiny_bert(tmp_path), 3)


def test_cached_training_equals_training_with_the_bottom_recomputed(tmp_path):
    """The train stage with model.cache_frozen true and false: same saved weights, within float tolerance.

    Dropout is 0 so that recomputing the bottom in train mode is the same function as caching it in eval mode
    (the stage turns the frozen layers' dropout off; this checks nothing else differs: data order, head init,
    optimizer groups, best-checkpoint reload, SWA)."""
    weights = {}
    for cache in (True, False):
        root = tmp_path / f"cache-{cache}"
        make_tiny_root(root, num_layers=3, dropout=0.0)
        seed, model, loss, train = _params(root)
        model = dataclasses.replace(model, freeze_layers=2, cache_frozen=cache)
        run(seed, model, loss, train, root=root)
        weights[cache] = load_file(root / "models/train/model.safetensors")
    base = load_file(tmp_path / "cache-True/base/model.safetensors")
    assert weights[True].keys() == weights[False].keys()
    for name, value in weights[True].items():
        torch.testing.assert_close(value, weights[False][name], atol=1e-5, rtol=1e-4, msg=name)
    frozen_name = "bert.encoder.layer.1.attention.self.query.weight"
    top_name = "bert.encoder.layer.2.attention.self.query.weight"
    assert torch.equal(weights[True][frozen_name], base[frozen_name])  # frozen: unchanged
    assert not torch.allclose(weights[True][top_name], base[top_name])  # trained


"""train.group_by_length: the stage's Trainer draws length-grouped batches, and refuses the cached frozen layers."""

import pytest
import torch

from stages import common
from stages.encoder import ModelParams
from stages.train import check_sampling
from stages.trainer import FocalTrainer, training_args
from test_train import STEP_ALPHA, STEP_LOSS, _dropout_free_model, _params, _step_batch, tiny_root  # noqa: F401


def _epoch_lengths(root, tmp_path, group_by_length: bool) -> list[int]:
    """The token count of each example in the order the stage's Trainer would train on them (one epoch)."""
    from transformers import DataCollatorWithPadding
    from transformers.trainer_pt_utils import LengthGroupedSampler

    data, tokenizer = _step_batch(root)
    train_params = _params(root, batch_size=8, group_by_length=group_by_length)[3]
    args = training_args(str(tmp_path / f"g{group_by_length}"), train_params, seed=7)
    args.eval_strategy, args.load_best_model_at_end = "no", False  # no eval set here: only the train order
    trainer = FocalTrainer(model=_dropout_free_model(root), args=args, train_dataset=data,
                           data_collator=DataCollatorWithPadding(tokenizer), alpha=torch.tensor(STEP_ALPHA),
                           loss_params=STEP_LOSS, train_params=train_params)
    assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler) == group_by_length
    return [int(n) for batch in trainer.get_train_dataloader() for n in batch["attention_mask"].sum(1)]


def test_length_grouping_orders_the_batches_by_length_and_random_does_not(tiny_root, tmp_path):
    grouped, shuffled = (_epoch_lengths(tiny_root, tmp_path, g) for g in (True, False))
    assert sorted(grouped) == sorted(shuffled) and len(set(grouped)) > 1  # the same 8 texts, of several lengths
    # 8 texts are one of the sampler's mega-batches (a batch, on so few): sorted, longest first
    assert grouped == sorted(grouped, reverse=True)
    assert shuffled != sorted(shuffled, reverse=True)


def test_length_grouping_with_cached_frozen_layers_fails_with_the_fix(tiny_root):
    grouped = _params(tiny_root, group_by_length=True)[3]
    frozen = ModelParams("tiny", 32, "head", 1, True)
    with pytest.raises(common.ParamsError, match=r"train.group_by_length .* model.freeze_layers \(1\) and "
                                                 r"model.cache_frozen .* set train.group_by_length: false"):
        check_sampling(frozen, grouped)
    check_sampling(ModelParams("tiny", 32, "head", 1, False), grouped)  # recomputed frozen layers: token ids
    check_sampling(frozen, _params(tiny_root)[3])  # no grouping: nothing to refuse

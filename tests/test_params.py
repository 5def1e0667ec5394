"""Every key of params.yaml: required (no silent code default) and range- or type-checked at load.

One table holds a wrong value for every key; a coverage test fails when params.yaml gains a
key the table does not list, so a new key cannot skip validation.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from stages.alpha import AlphaParams
from stages.augment import AugmentParams
from stages.common import PARAMS_FILE, ParamsError, load_seed, parse_params, read_params
from stages.encoder import ModelParams
from stages.evaluate import EvaluateParams
from stages.focal_loss import LossParams
from stages.log import LogParams
from stages.prepare import DataParams
from stages.pretrain import PretrainParams
from stages.tokenizer import TokenizerParams
from stages.train import TrainParams

SECTIONS = {"data": DataParams, "model": ModelParams, "tokenizer": TokenizerParams, "pretrain": PretrainParams,
            "augment": AugmentParams,
            "alpha": AlphaParams, "loss": LossParams, "train": TrainParams, "evaluate": EvaluateParams,
            "log": LogParams}
PARAMS = read_params(PARAMS_FILE)

# key -> (a wrong value, what the error must say: the key, the value and what is allowed)
BAD = {
    "seed": (-1, r"seed: -1 must be an integer in \[0, 2\*\*32\)"),
    "data.source": (3, r"data.source: expected str, got 3"),
    "data.text_column": (None, r"data.text_column: expected str, got None"),
    "data.label_column": ([], r"data.label_column: expected str, got \[\]"),
    "data.test_path": (1.5, r"data.test_path: 1.5 does not match"),
    "data.test_fraction": (1.0, r"data.test_fraction: 1.0 is out of range, allowed \(0, 1\)"),
    "data.val_fraction": (0, r"data.val_fraction: 0.0 is out of range, allowed \(0, 1\)"),
    "data.min_class_count": (1, r"data.min_class_count: 1 is out of range, allowed >= 2"),
    "model.name": (True, r"model.name: expected str, got True"),
    "model.max_length": (4, r"model.max_length: 4 is out of range, allowed >= 8"),
    "model.truncation": ("tail", r"model.truncation: 'tail' is not one of \['head', 'head_tail'\]"),
    "model.freeze_layers": (-1, r"model.freeze_layers: -1 is out of range, allowed >= 0"),
    "model.cache_frozen": ("no", r"model.cache_frozen: expected bool, got 'no'"),
    "tokenizer.mode": ("merge", r"tokenizer.mode: 'merge' is not one of \['extend', 'scratch'\]"),
    "tokenizer.vocab_size": (10, r"tokenizer.vocab_size: 10 is out of range, allowed >= 32"),
    "tokenizer.model_type": ("wordpiece", r"tokenizer.model_type: 'wordpiece' is not one of"),
    "tokenizer.max_new_tokens": (-1, r"tokenizer.max_new_tokens: -1 is out of range, allowed >= 0"),
    "tokenizer.min_frequency": (0, r"tokenizer.min_frequency: 0 is out of range, allowed >= 1"),
    "pretrain.enabled": (0, r"pretrain.enabled: expected bool, got 0"),
    "pretrain.epochs": (0, r"pretrain.epochs: 0 is out of range, allowed >= 1"),
    "pretrain.batch_size": (0, r"pretrain.batch_size: 0 is out of range, allowed >= 1"),
    "pretrain.learning_rate": (-1e-4, r"pretrain.learning_rate: -0.0001 is out of range, allowed > 0"),
    "pretrain.weight_decay": (-0.1, r"pretrain.weight_decay: -0.1 is out of range, allowed >= 0"),
    "pretrain.warmup_ratio": (1.0, r"pretrain.warmup_ratio: 1.0 is out of range, allowed \[0, 1\)"),
    "pretrain.mask_probability": (0.0, r"pretrain.mask_probability: 0.0 is out of range, allowed \(0, 1\)"),
    "pretrain.device": ("tpu", r"pretrain.device: 'tpu' is not one of \['auto', 'cpu', 'cuda'\]"),
    "augment.enabled": ("yes", r"augment.enabled: expected bool, got 'yes'"),
    "augment.backend": ("google", r"augment.backend: 'google' is not one of"),
    "augment.from_model": (1, r"augment.from_model: expected str, got 1"),
    "augment.to_model": (None, r"augment.to_model: expected str, got None"),
    "augment.target_ratio": (1.5, r"augment.target_ratio: 1.5 is out of range, allowed \(0, 1\]"),
    "augment.max_per_source": (0, r"augment.max_per_source: 0 is out of range, allowed >= 1"),
    "augment.max_length_ratio": (0.9, r"augment.max_length_ratio: 0.9 is out of range, allowed >= 1"),
    "augment.batch_size": (0, r"augment.batch_size: 0 is out of range, allowed >= 1"),
    "augment.max_length": (0, r"augment.max_length: 0 is out of range, allowed >= 1"),
    "alpha.method": ("focal", r"alpha.method: 'focal' is not one of"),
    "alpha.beta": (1.0, r"alpha.beta: 1.0 is out of range, allowed \[0, 1\)"),
    "loss.gamma": (-0.5, r"loss.gamma: -0.5 is out of range, allowed >= 0"),
    "loss.label_smoothing": (1.0, r"loss.label_smoothing: 1.0 is out of range, allowed \[0, 1\)"),
    "train.max_epochs": (0, r"train.max_epochs: 0 is out of range, allowed >= 1"),
    "train.batch_size": (0, r"train.batch_size: 0 is out of range, allowed >= 1"),
    "train.learning_rate": (0, r"train.learning_rate: 0.0 is out of range, allowed > 0"),
    "train.weight_decay": (-0.1, r"train.weight_decay: -0.1 is out of range, allowed >= 0"),
    "train.warmup_ratio": (1.0, r"train.warmup_ratio: 1.0 is out of range, allowed \[0, 1\)"),
    "train.early_stopping_patience": (0, r"train.early_stopping_patience: 0 is out of range, allowed >= 1"),
    "train.device": ("gpu", r"train.device: 'gpu' is not one of \['auto', 'cpu', 'cuda'\]"),
    "train.nproc": (0, r"train.nproc: 0 is out of range, allowed >= 1"),
    "train.grad_accum_steps": (3, r"train.batch_size \(16\) is the global batch and must be a multiple of "
                                  r"train.nproc x train.grad_accum_steps \(1 x 3\)"),
    "loss.ordinal": (["negative", 3], r"loss.ordinal: \['negative', 3\] does not match"),
    "train.folds": (0, r"train.folds: 0 is out of range, allowed >= 1"),
    "train.patience_from": ("last", r"train.patience_from: 'last' is not one of \['swa_start', 'first_epoch'\]"),
    "train.refit": ("no", r"train.refit: expected bool, got 'no'"),
    "train.group_by_length": (1, r"train.group_by_length: expected bool, got 1"),
    "train.temperature_scaling": ("yes", r"train.temperature_scaling: expected bool, got 'yes'"),
    "train.sub_batches": (0, r"train.sub_batches: 0 is out of range, allowed >= 1"),
    "train.select_metric": ("loss", r"train.select_metric: 'loss' is not one of \['macro_f1', 'ce_loss', "
                                    r"'focal_loss'\]"),
    "train.swa.enabled": (1, r"train.swa.enabled: expected bool, got 1"),
    "train.swa.start_epoch": (1, r"train.swa.start_epoch: 1 is out of range, allowed >= 2"),
    "train.swa.lr": (0.0, r"train.swa.lr: 0.0 is out of range, allowed > 0"),
    "train.swa.keep": ("last", r"train.swa.keep: 'last' is not one of \['best', 'swa', 'auto'\]"),
    "evaluate.batch_size": (0, r"evaluate.batch_size: 0 is out of range, allowed >= 1"),
    "evaluate.ece_bins": (1, r"evaluate.ece_bins: 1 is out of range, allowed >= 2"),
    "evaluate.bias_search": (-1, r"evaluate.bias_search: -1.0 is out of range, allowed >= 0"),
    "log.experiment_name": (7, r"log.experiment_name: expected str, got 7"),
    "log.registered_model": (None, r"log.registered_model: expected str, got None"),
    "log.log_model": ("queued", r"log.log_model: 'queued' is not one of \['workspace', 'all', 'none'\]"),
}


def leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    return [k for key, value in tree.items()
            for k in (leaf_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"])]


def with_value(key: str, value) -> dict:
    """params.yaml with `key` set to `value` (or deleted when value is ...)."""
    params = copy.deepcopy(PARAMS)
    *parents, last = key.split(".")
    node = params
    for part in parents:
        node = node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return params


def load(params: dict, key: str, tmp_path):
    section = key.split(".")[0]
    if section == "seed":
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(params))
        return load_seed(path)
    return parse_params(SECTIONS[section], params[section], section)


def test_the_table_covers_every_key_of_params_yaml():
    assert sorted(BAD) == sorted(leaf_keys(PARAMS))


@pytest.mark.parametrize("key", sorted(BAD))
def test_every_key_rejects_a_wrong_value_naming_key_value_and_allowed(key, tmp_path):
    value, message = BAD[key]
    load(PARAMS, key, tmp_path)  # the committed value loads
    with pytest.raises(ParamsError, match=message):
        load(with_value(key, value), key, tmp_path)


@pytest.mark.parametrize("key", sorted(BAD))
def test_every_key_is_required(key, tmp_path):
    name = key.rsplit(".", 1)[-1]
    with pytest.raises(ParamsError, match=rf"missing key '{name}'|'seed' must be|seed: None"):
        load(with_value(key, ...), key, tmp_path)

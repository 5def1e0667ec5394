"""train.refit: the fit on train picks the epochs and the weights to keep; a fresh fit on train + val
repeats that choice, and the stage's held-out scores stay the first fit's."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stages import common
from stages.fit import refit_plan
from stages.swa import SwaParams
from stages.train import TrainParams, run
from test_train import _params, make_tiny_root, tiny_root  # noqa: F401 (a fixture)


def test_refit_plan_repeats_the_swa_epochs_or_stops_at_the_best_epoch():
    chosen = {"epochs_run": 7, "best": {"epoch": 2}}
    assert refit_plan({**chosen, "kept": "swa"}) == (7, "swa")
    assert refit_plan({**chosen, "kept": "best"}) == (2, "best")


def test_refit_trains_a_new_model_on_train_and_val_for_the_chosen_epochs(tmp_path):
    plain_root, refit_root = make_tiny_root(tmp_path / "plain"), make_tiny_root(tmp_path / "refit")
    plain = run(*_params(plain_root), root=plain_root)
    refit = run(*_params(refit_root, refit=True), root=refit_root)
    assert plain["kept"] == "swa"
    # the first fit is the same fit either way, and its validation scores are the stage's
    for key in ("heldout", "best", "swa", "epochs_run", "kept"):
        assert refit[key] == plain[key], key
    heldout = [json.loads((root / "models/train/heldout.json").read_text()) for root in (plain_root, refit_root)]
    assert heldout[0] == heldout[1]
    assert refit["refit"] == {"epochs_run": plain["epochs_run"], "kept": "swa",
                              "n_train": plain["n_train"] + plain["n_val"]}
    # the stage's model is the refit's: other weights than the fit on train alone
    weights = [load_file(root / "models/train/model.safetensors") for root in (plain_root, refit_root)]
    assert weights[0].keys() == weights[1].keys()
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert json.loads((refit_root / "models/train/pipeline.json").read_text())["train"]["refit"] is True


def test_a_refit_of_a_kept_best_checkpoint_stops_at_its_epoch(tiny_root):
    # flat validation loss (lr 1e-30): the best epoch is 1 and early stopping ends the fit at epoch 3;
    # the refit, with no early stopping, trains 1 epoch
    no_swa = SwaParams(enabled=False, start_epoch=2, lr=1e-3, keep="best")
    params = _params(tiny_root, learning_rate=1e-30, max_epochs=6, early_stopping_patience=2, swa=no_swa, refit=True)
    metrics = run(*params, root=tiny_root)
    assert (metrics["epochs_run"], metrics["best"]["epoch"], metrics["kept"]) == (3, 1, "best")
    assert metrics["refit"]["epochs_run"] == 1 and metrics["refit"]["kept"] == "best"


def test_refit_with_folds_fails_with_the_fix():
    raw = common.as_dict(_params(Path("."))[3])
    with pytest.raises(ValueError, match=r"train.refit refits the single split's model .* train.folds is 3"):
        common.parse_params(TrainParams, {**raw, "refit": True, "folds": 3}, "train")

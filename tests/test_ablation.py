"""bench/ablation.py: the rows it queues and what its report reads."""

from bench.ablation import kept_val_f1, rows
from stages.common import read_params


def _dotted(params: dict, key: str):
    for part in key.split("."):
        params = params[part]
    return params


def test_the_final_row_is_params_yaml_default():
    params = read_params()
    final = dict((name, overrides) for name, _, overrides in rows())["final"]
    assert {key: _dotted(params, key) for key in final} == final


def test_rows_are_cumulative_and_pin_every_key_a_later_row_changes():
    built = rows()
    keys = [set(overrides) for _, _, overrides in built]
    assert all(keys[0] == k for k in keys), "a key set only by a later row would float with params.yaml"
    plain, tapt10 = built[0][2], built[-1][2]
    assert plain["pretrain.enabled"] is False and tapt10["pretrain.enabled"] is True
    assert tapt10["pretrain.epochs"] == 10


def test_report_reads_the_validation_score_of_the_kept_model():
    def exp(name, kept):
        train = {"kept": kept, "best": {"val_macro_f1": 0.4}, "swa": {"val_macro_f1": 0.5}}
        return {"name": name, "data": {"metrics": {"metrics/train.json": {"data": train}}}}

    shown = [{"rev": "abc", "experiments": [{"revs": [exp("abl-a-s1", "swa")]}, {"revs": [exp("abl-b-s1", "best")]},
                                             {"revs": [{"name": "queued", "data": {"metrics": {}}}]}]}]
    assert kept_val_f1(shown) == {"abl-a-s1": 0.5, "abl-b-s1": 0.4}

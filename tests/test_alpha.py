import json

import pytest

from stages import common
from stages.alpha import AlphaParams, class_counts, compute_alpha, run


def test_inverse_maps_counts_to_reference_weights():
    got = compute_alpha([400, 100, 370, 140], "inverse")
    assert got == pytest.approx([0.11, 0.45, 0.12, 0.32], abs=0.01)
    assert sum(got) == pytest.approx(1.0)


def test_effective_number_interpolates_between_uniform_and_inverse():
    counts = [400, 100, 370, 140]
    assert compute_alpha(counts, "effective_number", beta=0.0) == pytest.approx([0.25] * 4)
    near_inverse = compute_alpha(counts, "effective_number", beta=0.999999)
    assert near_inverse == pytest.approx(compute_alpha(counts, "inverse"), abs=1e-3)
    mid = compute_alpha(counts, "effective_number", beta=0.99)
    assert mid[1] > mid[3] > mid[2] > mid[0]  # rarer class => larger weight


def test_none_is_all_ones():
    assert compute_alpha([5, 50], "none") == [1.0, 1.0]


def test_zero_count_class_is_rejected():
    with pytest.raises(ValueError, match="at least one"):
        compute_alpha([10, 0], "inverse")


def test_class_counts_follow_label_order_and_reject_unknown():
    rows = [{"label": "b"}, {"label": "a"}, {"label": "b"}]
    assert class_counts(rows, ["a", "b"]) == [1, 2]
    with pytest.raises(ValueError, match="missing from labels.json"):
        class_counts(rows + [{"label": "z"}], ["a", "b"])


def test_unknown_params_key_is_rejected():
    with pytest.raises(common.ParamsError, match="betta"):
        common.parse_params(AlphaParams, {"method": "inverse", "beta": 0.9, "betta": 1}, "alpha")


def test_run_writes_alpha_and_metrics(tmp_path):
    train = tmp_path / "train.jsonl"
    common.write_jsonl(train, [{"id": str(i), "text": "x", "label": lab} for i, lab in enumerate("aaab")])
    labels = tmp_path / "labels.json"
    common.write_json(labels, ["a", "b"])
    run(AlphaParams("inverse", 0.999), train, labels, tmp_path / "alpha", tmp_path / "m.json")
    saved = json.loads((tmp_path / "alpha" / "alpha.json").read_text())
    assert saved["labels"] == ["a", "b"] and saved["alpha"] == pytest.approx([0.25, 0.75])
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["per_class"]["b"]["count"] == 1


def test_run_reads_train_line_by_line_and_names_a_bad_row(tmp_path):
    train = tmp_path / "train.jsonl"
    common.write_jsonl(train, [{"id": "0", "text": "x", "label": "a"}, {"id": "1", "text": "y"}])
    common.write_json(tmp_path / "labels.json", ["a"])
    with pytest.raises(ValueError, match=r"train.jsonl row 2: missing key\(s\) \['label'\]"):
        run(AlphaParams("inverse", 0.999), train, tmp_path / "labels.json", tmp_path / "alpha", tmp_path / "m.json")
    assert not (tmp_path / "alpha").exists() and not (tmp_path / "m.json").exists()
    assert class_counts(iter([{"label": "b"}, {"label": "a"}]), ["a", "b"]) == [1, 1]  # any iterable of rows


def test_params_and_methods_fail_with_the_full_message():
    with pytest.raises(common.ParamsError, match=r"^alpha\.beta: 1\.0 is out of range, allowed \[0, 1\)"):
        AlphaParams("effective_number", 1.0)
    with pytest.raises(ValueError, match=r"^unknown alpha\.method 'bogus'$"):
        compute_alpha([1, 2], "bogus")


def test_effective_number_defaults_to_beta_0_999():
    counts = [400, 100, 370, 140]
    assert compute_alpha(counts, "effective_number") == compute_alpha(counts, "effective_number", 0.999)
    assert compute_alpha(counts, "effective_number") != compute_alpha(counts, "effective_number", 0.99)


def _abc_train(tmp_path, counts):
    rows = [{"id": f"{lab}{i}", "text": "x", "label": lab} for lab, n in zip("abc", counts) for i in range(n)]
    common.write_jsonl(tmp_path / "train.jsonl", rows)
    common.write_json(tmp_path / "labels.json", ["a", "b", "c"])
    return tmp_path / "train.jsonl", tmp_path / "labels.json"


def test_run_metrics_are_rounded_and_printed_per_class(tmp_path, capsys):
    # inverse of counts 3, 7, 11: 77/131, 33/131, 21/131; largest over smallest 11/3
    train, labels = _abc_train(tmp_path, [3, 7, 11])
    metrics = run(AlphaParams("inverse", 0.999), train, labels, tmp_path / "alpha", tmp_path / "m.json")
    per_class = {"a": {"count": 3, "alpha": 0.587786}, "b": {"count": 7, "alpha": 0.251908},
                 "c": {"count": 11, "alpha": 0.160305}}
    assert metrics == {"method": "inverse", "max_over_min": 3.6667, "per_class": per_class}
    assert json.loads((tmp_path / "m.json").read_text()) == metrics
    assert capsys.readouterr().out == "alpha (inverse) from 21 rows: a=0.588, b=0.252, c=0.160\n"


def test_run_uses_the_params_beta(tmp_path):
    train, labels = _abc_train(tmp_path, [3, 7, 11])
    run(AlphaParams("effective_number", 0.5), train, labels, tmp_path / "alpha", tmp_path / "m.json")
    saved = json.loads((tmp_path / "alpha" / "alpha.json").read_text())["alpha"]
    assert saved == pytest.approx(compute_alpha([3, 7, 11], "effective_number", 0.5))
    assert saved != pytest.approx(compute_alpha([3, 7, 11], "effective_number"))

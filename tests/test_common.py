import json

import pytest

from stages import common


def test_atomic_file_replaces_on_success_and_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "out" / "f.png"
    with common.atomic_file(path) as tmp:
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new" and oct(path.stat().st_mode & 0o777) == "0o644"
    with pytest.raises(RuntimeError):
        with common.atomic_file(path) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("stage failed")
    assert path.read_bytes() == b"new"
    assert [p.name for p in path.parent.iterdir()] == ["f.png"]  # no temp file left behind


def test_read_rows_names_the_file_and_row_of_a_bad_row(tmp_path):
    path = tmp_path / "val.jsonl"
    common.write_jsonl(path, [{"id": "a", "text": "x", "label": "p"}, {"id": "b", "text": 3, "label": "p"}])
    with pytest.raises(ValueError, match=r"val.jsonl row 2: 'text' is not a string"):
        common.read_rows(path)
    common.write_text(path, "")
    with pytest.raises(ValueError, match="val.jsonl is empty"):
        common.read_rows(path)


def test_iter_rows_streams_what_read_rows_returns_and_fails_the_same(tmp_path):
    path = tmp_path / "val.jsonl"
    rows = [{"id": "a", "text": "x", "label": "p"}, {"id": "b", "text": "y", "label": "q"}]
    common.write_text(path, "".join(json.dumps(r) + "\n\n" for r in rows))  # blank lines are skipped
    assert list(common.iter_rows(path)) == common.read_rows(path) == rows
    common.write_jsonl(path, rows + [{"id": "c", "label": "p"}])
    stream = common.iter_rows(path)
    assert next(stream) == rows[0]  # a stream yields the good rows before it reaches the bad one
    with pytest.raises(ValueError, match=r"val.jsonl row 3: missing key\(s\) \['text'\]"):
        list(stream)
    common.write_text(path, "")
    with pytest.raises(ValueError, match="val.jsonl is empty"):
        list(common.iter_rows(path))


def test_parse_params_names_unknown_and_mistyped_keys():
    from stages.alpha import AlphaParams

    with pytest.raises(common.ParamsError, match=r"alpha.beta: expected float, got 'high'"):
        common.parse_params(AlphaParams, {"method": "inverse", "beta": "high"}, "alpha")
    assert common.parse_params(AlphaParams, {"method": "none", "beta": 0}, "alpha").beta == 0.0  # int -> float


def test_local_model_dirs_must_live_under_models_base(tmp_path):
    from stages.common import BASE_MODELS_DIR, BUNDLED_MODEL, ParamsError, check_tracked_model

    (tmp_path / BASE_MODELS_DIR / "enc").mkdir(parents=True)
    (tmp_path / "elsewhere" / "enc").mkdir(parents=True)
    assert check_tracked_model("models/base/enc", "model.name", tmp_path) == "models/base/enc"
    assert check_tracked_model(str(tmp_path / "models/base/enc"), "model.name", tmp_path)  # absolute is fine too
    assert check_tracked_model("sentence-transformers/all-MiniLM-L6-v2", "model.name", tmp_path)  # a hub id
    assert check_tracked_model(BUNDLED_MODEL, "model.name", tmp_path) == BUNDLED_MODEL
    with pytest.raises(ParamsError, match=r"augment.from_model: elsewhere/enc is a local directory outside "
                                          r"models/base/, so `dvc repro` would not notice"):
        check_tracked_model("elsewhere/enc", "augment.from_model", tmp_path)


def test_head_tail_truncation_keeps_the_start_and_the_end_inside_the_special_tokens(tmp_path):
    from transformers import AutoTokenizer

    from stages.text import tokenize
    from tiny_bert import build_tiny_bert

    words = [f"w{chr(97 + i)}" for i in range(20)]  # wa .. wt: one token each
    tok = AutoTokenizer.from_pretrained(build_tiny_bert(tmp_path / "bert", [" ".join(words)]))
    long_text, short = " ".join(words), "wa wb"
    tail = tokenize(tok, [long_text, short], 10, "head_tail")
    head = tokenize(tok, [long_text, short], 10, "head")
    assert tok.convert_ids_to_tokens(tail["input_ids"][0]) == ["[CLS]", "wa", "wb"] + words[-6:] + ["[SEP]"]
    assert tok.convert_ids_to_tokens(head["input_ids"][0]) == ["[CLS]"] + words[:8] + ["[SEP]"]
    assert tail["input_ids"][1] == head["input_ids"][1] == tok(short)["input_ids"]  # short texts are untouched
    assert all(len(v[0]) == 10 for v in tail.values())  # mask and type ids are cut alike

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

    from stages.common import tokenize
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


# ---------------------------------------------------------------- common.cli: how a stage command fails


def stage_command(root, *args, **env):
    """`python -m stages.alpha` on the pipeline files under `root` (PIPELINE_ROOT)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**{k: v for k, v in os.environ.items() if k not in ("PIPELINE_DEBUG", "DVC_STAGE")},
           "PIPELINE_ROOT": str(root), **env}
    return subprocess.run([sys.executable, "-m", "stages.alpha", *args], cwd=Path(common.__file__).parent.parent,
                          env=env, capture_output=True, text=True, timeout=120)


def alpha_root(root, method="inverse", train_lines=None):
    common.write_text(root / "params.yaml", f"alpha:\n  method: {method}\n  beta: 0.999\n")
    common.write_json(root / "data/prepare/labels.json", ["neg", "pos"])
    lines = train_lines or [json.dumps({"id": str(i), "text": "t", "label": ["neg", "pos"][i % 2]}) for i in range(4)]
    common.write_text(root / "data/augment/train.jsonl", "\n".join(lines) + "\n")
    return root


def test_a_bad_param_is_one_error_line_naming_stage_key_and_fix(tmp_path):
    done = stage_command(alpha_root(tmp_path, method="inverse_sqrt"))
    assert done.returncode == 1 and not (tmp_path / "metrics").exists()
    assert done.stderr.splitlines() == [
        "alpha: error: alpha.method: 'inverse_sqrt' is not one of ['inverse', 'effective_number', 'none'] "
        "(PIPELINE_DEBUG=1 shows the traceback)"]


def test_pipeline_debug_shows_the_traceback_of_a_user_error(tmp_path):
    done = stage_command(alpha_root(tmp_path, method="inverse_sqrt"), PIPELINE_DEBUG="1")
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and "ParamsError: alpha.method" in done.stderr


def test_a_missing_input_file_is_a_user_error(tmp_path):
    alpha_root(tmp_path)
    (tmp_path / "data/prepare/labels.json").unlink()
    done = stage_command(tmp_path)
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("alpha: error: [Errno 2] No such file or directory") and "labels.json" in done.stderr


def test_an_error_raised_inside_a_library_keeps_its_traceback(tmp_path):
    done = stage_command(alpha_root(tmp_path, train_lines=['{"id": "0", "text": "t", "label": "neg"}', "{not json"]))
    assert done.returncode == 1 and "alpha: error" not in done.stderr
    assert "Traceback (most recent call last)" in done.stderr and "json.decoder.JSONDecodeError" in done.stderr


def test_under_dvc_a_stage_records_its_start_end_and_launching_process(tmp_path):
    import os
    import time

    import psutil

    before = time.time()
    done = stage_command(alpha_root(tmp_path), DVC_STAGE="alpha")
    assert done.returncode == 0, done.stderr
    times = common.read_json(tmp_path / common.TIMES_DIR / "alpha.json")
    assert before <= times["started"] <= times["ended"] <= time.time()
    assert times["launcher"] == f"{os.getpid()}@{psutil.Process().create_time():.2f}"  # this test ran it
    (tmp_path / common.TIMES_DIR / "alpha.json").unlink()
    assert stage_command(tmp_path).returncode == 0 and not (tmp_path / common.TIMES_DIR / "alpha.json").exists()

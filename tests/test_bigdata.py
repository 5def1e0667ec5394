"""prepare, tokenizer and alpha stream a 200,000-row CSV: their memory does not grow with the rows' texts.

Each stage runs as `python -m stages.<name>` in its own process on a scratch copy of the project
(PIPELINE_ROOT), through bench/bigdata.py's harness, once on SMALL and once on ROWS rows of the
same synthetic corpus, with a tiny local BERT as the base model. The difference of the two peak
resident sets is the memory that grows with the data: imports, the model and the allocator's
baseline cost the same in both runs, so the bounds hold on any machine.

The yardstick is what the stages used to do: hold every row as a parsed dict, measured here with
tracemalloc on the rows prepare wrote (~570 bytes a row, ~110 MiB for ROWS rows). The old code
held several such copies (its growth from SMALL to ROWS: prepare ~255 MiB, tokenizer 289 MiB,
alpha 79 MiB, all failing here). Streaming keeps per row only numpy columns (prepare: label id,
text hash, split code, and the index arrays of dedupe and splitting, ~130 bytes a row at the peak;
measured growth 39 MiB) or nothing (alpha: 0 MiB; tokenizer: 44 MiB, all of it SentencePiece,
whose trainer needs memory in proportion to the text it learns from, ~7x for the BPE used here and
~23x for unigram, capped by sampling at SPM_MAX_BYTES). So each bound is a fraction of one dict
per row: a stage that lists its rows cannot meet it, a streaming one meets it with room to spare.
"""

from __future__ import annotations

import itertools
import json
import shutil
import tracemalloc
from pathlib import Path

import pytest
import yaml

from bench import bigdata, record
from bench.bigdata import STAGES, make_project, run_stage
from stages import common
from tests.tiny_bert import build_tiny_bert

ROWS, SMALL = 200_000, 2_000
# Largest growth allowed, as a share of ROWS rows held once as dicts.
BOUND_SHARE = {"prepare": 0.6, "tokenizer": 0.6, "alpha": 0.05}  # alpha: slack for allocator noise only
MODEL = "models/base/tiny"  # where local base models must live (a DVC dependency)


def use_tiny_bpe(root: Path, base: Path) -> None:
    """The tiny BERT as base model and BPE for SentencePiece (a third of unigram's time and memory on 2 CPUs)."""
    shutil.copytree(base, root / MODEL)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["tokenizer"]["model_type"] = "bpe"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[Path, dict[str, dict[str, float]]]]:
    """{rows: (project root, {stage: {"seconds", "peak_mib"}})} for SMALL and ROWS rows."""
    base = build_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert", ["the a of and to in is it"])
    results = {}
    for n in (SMALL, ROWS):
        root = tmp_path_factory.mktemp(f"rows{n}-")
        make_project(root, n, MODEL)
        use_tiny_bpe(root, base)
        results[n] = root, {stage: run_stage(root, stage) for stage in STAGES}
    return results


def dict_row_bytes(path: Path, n: int = 20_000) -> float:
    """Python memory per row of the first `n` rows of `path` held as parsed dicts (what the stages used to do)."""
    with open(path, encoding="utf-8") as f:
        lines = list(itertools.islice(f, n))
    tracemalloc.start()
    try:
        rows = [json.loads(line) for line in lines]
        return tracemalloc.get_traced_memory()[0] / len(rows)
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("stage", STAGES)
def test_memory_growth_with_rows_is_a_fraction_of_one_dict_per_row(runs, stage: str) -> None:
    (_, small), (root, large) = runs[SMALL], runs[ROWS]
    bound_mib = BOUND_SHARE[stage] * ROWS * dict_row_bytes(root / "data/prepare/train.jsonl") / 2**20
    growth = large[stage]["peak_mib"] - small[stage]["peak_mib"]
    print(f"{stage}: peak RSS {small[stage]['peak_mib']:.0f} MiB at {SMALL} rows, {large[stage]['peak_mib']:.0f} "
          f"MiB at {ROWS} rows ({large[stage]['seconds']:.1f} s); growth {growth:.0f} < {bound_mib:.0f} MiB")
    assert growth < bound_mib, f"{stage} grew by {growth:.0f} MiB from {SMALL} to {ROWS} rows"


def test_every_row_is_accounted_for_and_alpha_counts_the_train_split(runs) -> None:
    root = runs[ROWS][0]
    prepare = common.read_json(root / "metrics/prepare.json")
    assert sum(prepare["totals"].values()) + sum(prepare["dropped"].values()) == ROWS
    assert prepare["dropped"]["duplicates"] > 0 and prepare["dropped"]["label_conflicts"] > 0
    alpha = common.read_json(root / "metrics/alpha.json")
    assert {label: c["count"] for label, c in alpha["per_class"].items()} == prepare["train"]
    tokenizer = common.read_json(root / "metrics/tokenizer.json")
    assert tokenizer["tokens_added"] > 0 and tokenizer["spm_vocab_size"] > 1000


def test_bench_writes_every_size_and_stage_to_its_results_files(tmp_path, monkeypatch):
    """bench() -> table -> results files; the stage runs are faked here (the tests above run them for real)."""
    ran = []
    monkeypatch.setattr(bigdata, "run_stage", lambda root, stage: ran.append(stage) or {"seconds": 1.5, "peak_mib": 99.0})
    runs = bigdata.bench([300, 600], MODEL)
    json_path, md_path = record.write("bigdata", record.start(), {"runs": runs}, bigdata.table(runs), results=tmp_path)
    saved = json.loads(json_path.read_text())
    assert {"date", "commit", "command", "device", "load_before", "load_after"} <= set(saved)
    assert [(r["rows"], list(r["stages"])) for r in saved["runs"]] == [(300, list(STAGES)), (600, list(STAGES))]
    assert ran == list(STAGES) * 2 and saved["runs"][0]["csv_bytes"] < saved["runs"][1]["csv_bytes"]
    assert "| 600 | " in md_path.read_text() and "| tokenizer | 1.5 | 99 |" in md_path.read_text()

"""The marked tables in README.md and BENCHMARKS.md equal the results files behind them (tools/tables.py)."""

import pytest

from tools import tables

DOC = "intro\n<!-- enc-table: r/enc.md -->\n{body}<!-- /enc-table -->\nafter\n"


def test_every_marked_table_matches_its_results_file():
    for doc in tables.DOCS:
        text = (tables.ROOT / doc).read_text(encoding="utf-8")
        refreshed, stale = tables.fill(text, tables.ROOT)
        assert stale == [], f"{doc}: {stale} differ from their results files: run `make tables`"
    assert "encoder-table" in (tables.ROOT / "BENCHMARKS.md").read_text()  # the check has something to check


def test_fill_replaces_a_stale_body_and_reports_it(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r/enc.md").write_text("<!-- written by a bench -->\n| a |\n|---|\n| 1 |\n")
    text, stale = tables.fill(DOC.format(body="| a |\n|---|\n| 0.9 |\n"), tmp_path)
    assert stale == ["enc"]
    assert text == DOC.format(body="| a |\n|---|\n| 1 |\n")
    assert tables.fill(text, tmp_path) == (text, [])


def test_a_block_whose_results_file_is_missing_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="r/enc.md, which does not exist: run the bench script"):
        tables.fill(DOC.format(body=""), tmp_path)

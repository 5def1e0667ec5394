"""Fill the marked tables of README.md and BENCHMARKS.md from the results files that bench scripts write.

A block `<!-- NAME-table: bench/results/X.md -->` ... `<!-- /NAME-table -->` holds the table of
bench/results/X.md (its own comment lines left out). `make tables` rewrites every block;
`--check` exits 1 naming the stale blocks (tests/test_tables.py runs it), so a number in the
docs cannot drift from the file the script that measured it wrote.

Run: python -m tools.tables [--check]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "BENCHMARKS.md")
BLOCK = re.compile(r"(<!-- (?P<name>[\w-]+)-table: (?P<src>\S+) -->\n)(?P<body>.*?)(<!-- /(?P=name)-table -->)", re.S)


def rendered(src: Path) -> str:
    """The results file's table: every line but its HTML comments."""
    lines = src.read_text(encoding="utf-8").splitlines()
    return "".join(f"{line}\n" for line in lines if not line.startswith("<!--"))


def fill(text: str, root: Path) -> tuple[str, list[str]]:
    """`text` with every marked block refreshed, and the names of the blocks that changed."""
    stale: list[str] = []

    def one(m: re.Match) -> str:
        src = root / m["src"]
        if not src.is_file():
            raise FileNotFoundError(f"the {m['name']}-table block reads {m['src']}, which does not exist: "
                                    "run the bench script that writes it")
        body = rendered(src)
        if body != m["body"]:
            stale.append(m["name"])
        return m.group(1) + body + m.group(5)

    return BLOCK.sub(one, text), stale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail on a stale block instead of rewriting it")
    args = parser.parse_args()
    stale_all = []
    for doc in DOCS:
        path = ROOT / doc
        text, stale = fill(path.read_text(encoding="utf-8"), ROOT)
        stale_all += [f"{doc}: {name}-table" for name in stale]
        if stale and not args.check:
            path.write_text(text, encoding="utf-8")
    if args.check and stale_all:
        sys.exit(f"stale tables (run `make tables`): {', '.join(stale_all)}")
    print(f"{'stale' if stale_all else 'in sync'}: {', '.join(stale_all) or 'every marked table'}")


if __name__ == "__main__":
    main()

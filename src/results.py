"""`python -m src.results <kind> <sources ...> --output docs/results/<page>.md`: write a results page
(census, ood, table1, bench, claims, oodbench) from run or sweep folders, bench files or a claims
file (src/analysis/results.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from src.analysis.results import SECTIONS, write_page
from src.errors import run_command

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=list(SECTIONS))
    parser.add_argument("sources", type=Path, nargs="+", help="sweep/run folders, or bench results files")
    parser.add_argument("--output", type=Path, required=True, help="the page to write")
    parser.add_argument("--title", help="the page's title (default: one per kind)")
    parser.add_argument("--notes", type=Path, help="Markdown appended verbatim under 'Notes'")
    args = parser.parse_args()

    def write() -> None:
        write_page(args.kind, args.sources, args.output, args.title, args.notes)
        print(f"wrote {args.output}")

    run_command("src.results", write)

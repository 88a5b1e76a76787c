"""`python -m src.compare <sweep A> <sweep B> [...] [--baseline OVERRIDES] [--output DIR]`: compare
the configurations of sweeps run apart (e.g. last week's census against today's) as a sweep summary
compares its own (docs/sweeps.md, "Comparisons"); prints the comparison, and with --output writes
comparison.json and comparison.md into DIR."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from src.analysis.sweep import compare_sweeps, leading_sections
from src.errors import run_command
from src.files import write_text_atomic

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m src.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+", type=Path, help="sweep folders (outputs/multiruns/...)")
    parser.add_argument("--baseline", help='overrides only the baseline configuration has, e.g. "model=ca"')
    parser.add_argument("--output", type=Path, help="folder to write comparison.json and comparison.md into")
    arguments = parser.parse_args()
    if missing := [str(sweep) for sweep in arguments.sweeps if not sweep.is_dir()]:
        parser.error(f"not a folder: {', '.join(missing)}")

    def compare() -> None:
        result = compare_sweeps(arguments.sweeps, arguments.baseline)
        text = "\n".join([f"# Comparison of {', '.join(result['sweeps'])}", "", *leading_sections(result)])
        if arguments.output is not None:
            write_text_atomic(arguments.output / "comparison.json", json.dumps(result, indent=2))
            write_text_atomic(arguments.output / "comparison.md", text)
        print(text)

    run_command("src.compare", compare)

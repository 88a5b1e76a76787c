"""`python -m src.compare <sweep A> <sweep B> [...] [--baseline OVERRIDES] [--output DIR]`: compare
the configurations of sweeps run apart (e.g. last week's census against today's) as a sweep summary
compares its own (docs/sweeps.md, "Comparisons"); prints the comparison, and with --output writes
comparison.json and comparison.md into DIR."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from src.analysis.sweep import compare_sweeps, leading_sections
from src.errors import UserError

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m src.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+", type=Path, help="sweep folders (outputs/multiruns/...)")
    parser.add_argument("--baseline", help='overrides only the baseline configuration has, e.g. "model=ca"')
    parser.add_argument("--output", type=Path, help="folder to write comparison.json and comparison.md into")
    arguments = parser.parse_args()
    if missing := [str(sweep) for sweep in arguments.sweeps if not sweep.is_dir()]:
        parser.error(f"not a folder: {', '.join(missing)}")
    try:
        result = compare_sweeps(arguments.sweeps, arguments.baseline)
    except UserError as error:
        print(f"src.compare: {error}", file=sys.stderr)
        sys.exit(2)
    text = "\n".join([f"# Comparison of {', '.join(result['sweeps'])}", "", *leading_sections(result)])
    if arguments.output is not None:
        arguments.output.mkdir(parents=True, exist_ok=True)
        (arguments.output / "comparison.json").write_text(json.dumps(result, indent=2))
        (arguments.output / "comparison.md").write_text(text)
    print(text)

"""Report 004's Table 1 from the run folders of `python -m src.run -m experiment=table1_mnist`:

    python -m src.table1 outputs/multiruns/<folder> [more folders] [--samples 1000]

writes table1.md (mean ± std over seeds per model) and table1_samples.png (prior samples of each
model side by side, first seed) into the first folder (src/analysis/table1.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from src.analysis.table1 import write_table1
from src.errors import run_command

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+", help="multirun folders of experiment=table1_mnist")
    parser.add_argument("--samples", type=int, default=1000, help="prior samples per run")
    args = parser.parse_args()
    run_command("src.table1", lambda: print(write_table1(args.folders, args.samples)))

"""`python -m src.summary <sweep folder>`: (re)write a sweep's summary.json, summary.md and
summary.png from its job folders (every multirun writes them itself when it ends). For a sweep
submitted to a cluster and still running, it says how many jobs are done, running, failed and
missing (running counts the queued too), and writes the summary only once none is running."""

from __future__ import annotations

import sys
from pathlib import Path

from src.analysis.sweep import markdown, write_summary
from src.errors import UserError
from src.pipeline.cluster import progress

if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        print("usage: python -m src.summary <sweep folder>", file=sys.stderr)
        sys.exit(2)
    sweep_dir = Path(sys.argv[1])
    try:
        counts = progress(sweep_dir)
        if counts is not None:
            print(f"{sum(counts.values())} jobs: " + ", ".join(f"{n} {state}" for state, n in counts.items()))
        if counts is not None and counts["running"]:
            print("Still running: summary.json is written when its jobs have ended.")
        else:
            print(markdown(write_summary(sweep_dir)))
    except UserError as error:
        print(f"src.summary: {error}", file=sys.stderr)
        sys.exit(2)

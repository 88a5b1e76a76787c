"""`python -m src.summary <sweep folder>`: (re)write a sweep's summary.json, summary.md and
summary.png from its job folders (every multirun writes them itself when it ends). For a sweep
submitted to a cluster and still running, it says how many jobs are done, running, failed and
missing (running counts the queued too), and writes the summary only once none is running."""

from __future__ import annotations

import sys
from pathlib import Path

from src.analysis.sweep import markdown, write_summary
from src.errors import run_command
from src.pipeline.cluster import progress


def summarise(sweep_dir: Path) -> None:
    """Print how a running sweep stands, or write and print its summary once nothing runs."""
    counts = progress(sweep_dir)
    if counts is not None:
        print(f"{sum(counts.values())} jobs: " + ", ".join(f"{n} {state}" for state, n in counts.items()))
    if counts is not None and counts["running"]:
        print("Still running: summary.json is written when its jobs have ended.")
    else:
        print(markdown(write_summary(sweep_dir)))


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        print("usage: python -m src.summary <sweep folder>", file=sys.stderr)
        sys.exit(2)
    run_command("src.summary", lambda: summarise(Path(sys.argv[1])))

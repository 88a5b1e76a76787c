"""`python -m src.summary <sweep folder>`: (re)write a sweep's summary.json, summary.md and
summary.png from its job folders (every multirun writes them itself when it ends)."""

from __future__ import annotations

import sys
from pathlib import Path

from src.analysis.sweep import markdown, write_summary
from src.errors import run_command

if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        print("usage: python -m src.summary <sweep folder>", file=sys.stderr)
        sys.exit(2)
    run_command("src.summary", lambda: print(markdown(write_summary(Path(sys.argv[1])))))

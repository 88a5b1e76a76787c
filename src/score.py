"""Score new images with a trained model:
`python -m src.score ckpt_path=<run>/checkpoints/best.ckpt input=<file.npy | PNG folder> output=<file.csv>`
(src/pipeline/scoring_run.py)."""

from __future__ import annotations

import sys

from src.errors import run_command
from src.pipeline.scoring_run import command

if __name__ == "__main__":
    run_command("src.score", lambda: command(sys.argv[1:]))

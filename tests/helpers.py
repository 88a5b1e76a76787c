"""Shared test helpers: where the project and the shared datasets are, small fast overrides, and
`python -m src.run` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = PROJECT_ROOT.parent / "shared" / "datasets"
needs_shared_mnist = pytest.mark.skipif(
    not (SHARED_DATASETS / "MNIST" / "raw").is_dir()
    or not (SHARED_DATASETS / "FashionMNIST" / "raw").is_dir(),
    reason=f"real MNIST/Fashion-MNIST not found in {SHARED_DATASETS} (see docs/configuration.md, 'Data')",
)

# Small and fast: a handful of steps, no progress bar, no config tree.
FAST = [
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "print_config=false",
    # The OOD evaluation on at most 64 images per set (MNIST's would otherwise score 65000).
    "ood.max_images=64",
    "logger=none",
]


def src_run(*arguments: str, cwd: Path = PROJECT_ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m src.run <arguments>` in a fresh process (W&B offline), its output captured."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", "src.run", *arguments],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )

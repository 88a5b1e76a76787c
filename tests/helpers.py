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
    reason=f"real MNIST/Fashion-MNIST not found in {SHARED_DATASETS} "
    "(see docs/configuration.md, 'Data files and offline use')",
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


# Each dataset at a few batches (MNIST's from ../shared/datasets).
SMALL_DATA = {
    "lines": ["data.n_train=64", "data.n_val=16", "data.n_test=16"],
    "lines2x2": [],
    "mnist": [
        f"data.root={SHARED_DATASETS}",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
    ],
}
SMALL_DATA["fashion_mnist"] = SMALL_DATA["mnist"]
# The test metrics every model reports, and those the VAE and the VAE-GAN add.
TEST_KEYS = {"test/recon_mse", "test/recon_bce", "test/cosine_similarity", "test/loss"}
VAE_KEYS = {"test/kl", "test/neg_elbo"}
VAEGAN_KEYS = VAE_KEYS | {"test/disc_feature_error"}

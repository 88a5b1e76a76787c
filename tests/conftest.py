"""Shared fixtures: composing the real configs the way `python -m src.run` does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from src.run import compose_config

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = PROJECT_ROOT.parent / "shared" / "datasets"
needs_shared_mnist = pytest.mark.skipif(
    not (SHARED_DATASETS / "MNIST" / "raw").is_dir()
    or not (SHARED_DATASETS / "FashionMNIST" / "raw").is_dir(),
    reason=f"real MNIST/Fashion-MNIST not found in {SHARED_DATASETS} (see README, 'Data')",
)

# Small and fast: a handful of steps, no progress bar.
FAST = [
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    # The OOD evaluation on at most 64 images per set (MNIST's would otherwise score 65000).
    "ood.max_images=64",
    "logger=none",
]


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., DictConfig]:
    def make(*overrides: str) -> DictConfig:
        return compose_config(list(overrides), tmp_path / "run")

    return make

"""Report 004's Table 1: sample measures on known images, the table, the preset."""

from __future__ import annotations

import pytest
import torch

from src.analysis.table1 import markdown
from src.evaluation.sample_quality import nearest_cosine, sharpness
from src.models.losses import gray_fraction


def test_sharpness_grey_pixels_and_nearest_cosine_on_known_images() -> None:
    flat = torch.full((1, 1, 4, 4), 0.5)
    edge = torch.zeros(1, 1, 4, 4)
    edge[..., 2:] = 1.0  # a vertical edge: |dx| = 1 in one of the 3 columns of differences
    assert sharpness(flat).item() == 0.0
    assert sharpness(edge).item() == pytest.approx(1 / 3)
    assert gray_fraction(flat).item() == 1.0 and gray_fraction(edge).item() == 0.0
    assert nearest_cosine(edge, torch.cat([flat, edge])).item() == pytest.approx(1.0)


def test_table_has_mean_and_spread_per_model() -> None:
    rows = [
        {"model": "VAE", "test/loss": 100.0, "test/cosine_similarity": 0.9, "sharpness": 0.1},
        {"model": "VAE", "test/loss": 102.0, "test/cosine_similarity": 0.92, "sharpness": 0.1},
        {"model": "VAE-GAN", "test/loss": 50.0, "test/cosine_similarity": 0.95, "sharpness": 0.2},
    ]
    table = markdown(rows)
    assert "| VAE | 2 | 101 ± 1.41 | 91 ± 1.41 |" in table
    assert "| VAE-GAN | 1 | 50 | 95 |" in table


def test_table1_experiment_has_report_004s_settings(make_config) -> None:
    cfg = make_config("experiment=table1_mnist", "model=vaegan")
    assert cfg.data.name == "mnist" and cfg.data.batch_size == 32 and cfg.trainer.max_epochs == 50
    assert (
        cfg.model.net._target_ == "src.models.nets.ConvNet"
        and cfg.model.optimizer._target_ == "torch.optim.Adam"
    )
    assert dict(cfg.hydra.sweeper.params) == {"model": "vae,vaegan", "seed": "0,1,2"}

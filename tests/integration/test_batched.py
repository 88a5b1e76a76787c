"""The batched launcher's members start from the single runs' weights."""

from __future__ import annotations

from pathlib import Path

import torch

from hydra_plugins.batched_launcher.batched_launcher import BatchedLauncher
from src.pipeline.config import compose_config
from src.pipeline.training import seeded_model


def test_batched_members_start_from_the_single_runs_weights(tmp_path: Path) -> None:
    template = compose_config(["experiment=census_ca_2x2"], tmp_path)
    for seed in range(20):
        single = seeded_model(compose_config(["experiment=census_ca_2x2", f"seed={seed}"], tmp_path))
        member = seeded_model(BatchedLauncher._task_config(template, seed))
        for (name, a), (_, b) in zip(single.named_parameters(), member.named_parameters(), strict=True):
            assert torch.equal(a, b), (seed, name)
    assert not torch.equal(
        seeded_model(BatchedLauncher._task_config(template, 0)).bottleneck.weight,
        seeded_model(BatchedLauncher._task_config(template, 1)).bottleneck.weight,
    )

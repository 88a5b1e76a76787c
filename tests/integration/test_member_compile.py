"""The members' compiled step (`compile_members=true`, `fuse_member_matmuls=true`, as census_lines_* set
them): inductor fuses the members' matrix products into the element-wise passes for every batch
shape, an epoch's short last batch included, and the losses equal the uncompiled members' to
summation order."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.profiler import profile

from src.pipeline.batched import MemberEnsemble
from src.pipeline.config import compose_config
from src.pipeline.training import seeded_model

SEEDS = (0, 1)


def _ensemble(tmp_path: Path, compile: bool) -> MemberEnsemble:
    models, states = [], []
    for seed in SEEDS:
        cfg = compose_config(["experiment=census_lines_ca", "data.image_size=8", f"seed={seed}"], tmp_path)
        models.append(seeded_model(cfg))
        states.append(torch.get_rng_state())
    return MemberEnsemble(models, states, list(SEEDS), compile=compile, fuse_matmuls=compile)


def _products(ensemble: MemberEnsemble, images: torch.Tensor) -> tuple[torch.Tensor, set[str]]:
    """The members' losses on `images` and the batched-product operators their step ran (once
    compiled, backward included: tracing runs products of its own)."""
    ensemble.member_losses(images, shared=False)[0].sum().backward()
    with profile() as profiled:
        loss, _ = ensemble.member_losses(images, shared=False)
        loss.sum().backward()
    return loss.detach(), {event.key for event in profiled.key_averages() if "bmm" in event.key}


def test_the_members_products_are_fused_for_every_batch_shape(tmp_path: Path) -> None:
    fused, eager = _ensemble(tmp_path, compile=True), _ensemble(tmp_path, compile=False)
    generator = torch.Generator().manual_seed(0)
    for batch in (4, 3, 4):  # a full batch, an epoch's short last one, a full one again
        images = (torch.rand(len(SEEDS), batch, 1, 8, 8, generator=generator) > 0.5).float()
        fused_losses, fused_products = _products(fused, images)
        eager_losses, eager_products = _products(eager, images)
        assert eager_products and not fused_products, batch
        torch.testing.assert_close(fused_losses, eager_losses, rtol=1e-5, atol=0)

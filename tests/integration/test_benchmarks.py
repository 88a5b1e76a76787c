"""The benchmarks' paths do the framework's work and time what they say."""

from __future__ import annotations

import statistics

import pytest
import torch

from benchmarks.run import EXAMPLE_VAE, ExampleVAE, lightning_loop
from src.pipeline.training import seeded_model
from tests.helpers import SHARED_DATASETS, needs_shared_mnist


def test_bench_hand_loop_trains_the_frameworks_vae_objective(make_config) -> None:
    """The benchmark's hand-written loop does the framework's work: ExampleVAE's loss equals the
    framework's VAE (784-400-20, bce-sum + KL) loss on the same weights, images and noise."""
    cfg = make_config(*EXAMPLE_VAE)
    model = seeded_model(cfg)
    example = ExampleVAE()
    pairs = [
        (example.fc1, model.net.encoder[1]),
        (example.fc21, model.mu),
        (example.fc22, model.logvar),
        (example.fc3, model.net.decoder[0]),
        (example.fc4, model.net.decoder[2]),
    ]
    for mine, theirs in pairs:
        mine.load_state_dict(theirs.state_dict())
    images = torch.rand(16, 1, 28, 28)
    torch.manual_seed(0)
    framework_loss, _ = model.training_loss(images)
    torch.manual_seed(0)
    assert example.loss(images).item() == pytest.approx(framework_loss.item(), rel=1e-6)


def test_bench_bare_lightning_path_trains_the_example_vae() -> None:
    """`lightning_bare`: the example VAE through a bare Trainer, every batch of every epoch (300
    images in batches of 128: 3 steps an epoch), timed per epoch, and its loss goes down."""
    images = (torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    torch.manual_seed(0)
    untrained = ExampleVAE()
    measured, module = lightning_loop(images, epochs=3)
    assert module.trainer.global_step == 9
    assert measured["images_per_s"] > 0
    torch.manual_seed(1)
    before = untrained.loss(images).item()
    torch.manual_seed(1)
    assert module.vae.loss(images).item() < before - 10


def test_bench_interleaved_path_times_one_hand_step_per_trainer_step() -> None:
    """`interleaved`: after the warm-up epoch, every Trainer step is followed by one timed hand step
    (300 images in batches of 128: 3 steps an epoch, so 6 hand steps and 4 Trainer steps between
    them in epochs 2 and 3), and the hand loop's own model trains."""
    images = (torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    torch.manual_seed(0)
    _, untrained = ExampleVAE(), ExampleVAE()  # lightning_loop's BareModule, then the hand loop's
    measured, module = lightning_loop(images, epochs=3, interleaved=True)
    (interleaved,) = [callback for callback in module.trainer.callbacks if hasattr(callback, "hand_step_s")]
    assert len(interleaved.hand_step_s) == 6 and len(interleaved.trainer_step_s) == 4
    assert measured["hand_steps"] == 6
    assert measured["hand_step_ms"] == pytest.approx(1e3 * statistics.median(interleaved.hand_step_s))
    assert measured["hand_step_over_trainer_step"] == pytest.approx(
        measured["hand_step_ms"] / measured["trainer_step_ms"]
    )
    torch.manual_seed(1)
    before = untrained.loss(images).item()
    torch.manual_seed(1)
    assert interleaved.model.loss(images).item() < before - 10


@needs_shared_mnist
def test_bench_framework_interleaved_path_runs_the_frameworks_training(monkeypatch) -> None:
    """`framework_interleaved`: src.pipeline.training.train on the framework path's config, one hand
    step after each of its steps (one epoch: MNIST's 55 000 training images in batches of 128 = 430 steps)."""
    from benchmarks.run import framework_interleaved

    monkeypatch.setenv("DATA_ROOT", str(SHARED_DATASETS))
    images = torch.rand(256, 1, 28, 28)
    figures = framework_interleaved(images, epochs=1)
    assert figures["hand_steps"] == 430
    assert figures["hand_step_over_trainer_step"] == pytest.approx(
        figures["hand_step_ms"] / figures["trainer_step_ms"]
    )

"""Losses, scores and nets against hand-computed values on known inputs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from src.models.ca import ClassicalAutoencoder
from src.models.losses import gaussian_kl, reconstruction_error
from src.models.nets import ConvNet
from src.models.vae import VariationalAutoencoder

DENSE_2 = {"_target_": "src.models.nets.DenseNet", "hidden_dims": [2]}


def _zero_decoder(model: nn.Module) -> None:
    for param in model.net.decoder.parameters():
        nn.init.zeros_(param)


def test_reconstruction_error_on_known_input() -> None:
    images = torch.ones(3, 1, 2, 2)
    logits = torch.zeros(3, 1, 2, 2)  # sigmoid(0) = 0.5 everywhere
    assert torch.allclose(reconstruction_error(logits, images, "mse", "mean"), torch.full((3,), 0.25))
    assert torch.allclose(reconstruction_error(logits, images, "mse", "sum"), torch.full((3,), 1.0))
    assert torch.allclose(reconstruction_error(logits, images, "bce", "mean"), torch.full((3,), math.log(2)))
    assert torch.allclose(
        reconstruction_error(logits, images, "bce", "sum"), torch.full((3,), 4 * math.log(2))
    )


def test_gaussian_kl_on_known_values() -> None:
    mu = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    logvar = torch.tensor([[0.0, 0.0], [0.0, math.log(2.0)]])
    # 0.5 * (mu^2 + sigma^2 - 1 - log sigma^2) per dimension: 0; then 0.5 + 0.5 * (4 + 2 - 1 - log 2).
    expected = torch.tensor([0.0, 0.5 + 0.5 * (5 - math.log(2))])
    assert torch.allclose(gaussian_kl(mu, logvar), expected)


def test_evaluation_scores_of_a_gray_output() -> None:
    model = ClassicalAutoencoder(DENSE_2, [1, 2, 2])
    _zero_decoder(model)  # every output pixel is sigmoid(0) = 0.5
    images = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]).view(2, 1, 2, 2)
    scores = model.scores(images)
    assert torch.allclose(scores["recon_mse"], torch.tensor([0.25, 0.25]))
    assert torch.allclose(scores["recon_bce"], torch.full((2,), math.log(2)))
    # cos between (0.5, 0.5, 0.5, 0.5) and (1, 0, 0, 0) is 1/2; and (1, 1, 1, 1) is 1.
    assert torch.allclose(scores["cosine_similarity"], torch.tensor([0.5, 1.0]))
    loss, terms = model.training_loss(images)
    assert loss.item() == pytest.approx(0.25)


def test_vae_neg_elbo_and_kl_with_known_weights() -> None:
    model = VariationalAutoencoder(DENSE_2, [1, 2, 2], beta=3.0)
    _zero_decoder(model)
    for param in [*model.mu.parameters(), *model.logvar.parameters()]:
        nn.init.zeros_(param)
    nn.init.constant_(model.mu.bias, 2.0)  # mu = 2, sigma = 1 for every image: KL = 0.5 * 4 = 2
    images = torch.rand(5, 1, 2, 2)
    scores = model.scores(images)
    assert torch.allclose(scores["kl"], torch.full((5,), 2.0))
    assert torch.allclose(scores["neg_elbo"], torch.full((5,), 4 * math.log(2) + 2.0))
    loss, terms = model.training_loss(images)  # the decoder ignores z, so sampling changes nothing
    assert terms["kl"].item() == pytest.approx(2.0)
    assert loss.item() == pytest.approx(terms["recon"].item() + 3.0 * 2.0)


def test_heaviside_output_is_a_step() -> None:
    model = ClassicalAutoencoder(DENSE_2, [1, 2, 2], output_activation="heaviside")
    logits = torch.tensor([-2.0, -1e-4, 1e-4, 3.0])
    assert model.output(logits).tolist() == [0.0, 0.0, 1.0, 1.0]


def test_glorot_init_has_zero_biases_and_keras_bounds() -> None:
    model = ClassicalAutoencoder(DENSE_2, [1, 32, 32])
    first = model.net.encoder[1]
    bound = math.sqrt(6 / (1024 + 2))
    assert first.bias.abs().sum() == 0 and first.weight.abs().max() <= bound
    torch_init = ClassicalAutoencoder(DENSE_2, [1, 32, 32], init="torch")
    assert torch_init.net.encoder[1].bias.abs().sum() > 0


@pytest.mark.parametrize("size", [28, 32])
def test_conv_net_takes_28_and_32(size: int) -> None:
    model = VariationalAutoencoder({"_target_": "src.models.nets.ConvNet"}, [1, size, size], latent_dim=4)
    assert model.reconstruct(torch.rand(3, 1, size, size)).shape == (3, 1, size, size)
    convs = [m for m in model.net.encoder if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 64] and [c.stride[0] for c in convs] == [1, 2, 2]


def test_conv_net_uses_its_negative_slope_in_every_layer_dense_ones_included() -> None:
    net = ConvNet([1, 28, 28], latent_dim=2, hidden_dims=[16, 8], negative_slope=0.3)
    slopes = [m.negative_slope for m in net.modules() if isinstance(m, nn.LeakyReLU)]
    # 3 conv + 2 dense layers in the encoder; 2 dense, 1 after the projection and 2 conv in the decoder.
    assert slopes == [0.3] * 10
    assert not any(isinstance(m, nn.ReLU) for m in net.modules())


@pytest.mark.parametrize("size", [2, 30])
def test_conv_net_refuses_sizes_it_cannot_take(size: int) -> None:
    with pytest.raises(ValueError, match=rf"divisible by 4; this dataset's images are {size}x{size}"):
        ConvNet([1, size, size], latent_dim=2)


@pytest.mark.parametrize(
    ("key", "value"),
    [("reconstruction", "l1"), ("reduction", "max"), ("output_activation", "relu"), ("init", "x")],
)
def test_bad_model_options_are_named(key: str, value: str) -> None:
    with pytest.raises(ValueError, match=rf"model.{key} must be one of"):
        ClassicalAutoencoder(DENSE_2, [1, 2, 2], **{key: value})


def test_nan_loss_stops_with_a_message() -> None:
    from src.models.lightning_module import AutoencoderModule

    model = ClassicalAutoencoder(DENSE_2, [1, 2, 2])
    model.training_loss = lambda images, noise=None, step=None: (torch.tensor(float("nan")), {})
    with pytest.raises(FloatingPointError, match="became nan at step 0.*Lower model.optimizer.lr"):
        AutoencoderModule(model).training_step((torch.rand(4, 1, 2, 2),), 0)


def test_blur_counts_pixels_strictly_between_point_one_and_point_nine() -> None:
    model = ClassicalAutoencoder(DENSE_2, [1, 2, 2])
    _zero_decoder(model)
    with torch.no_grad():
        # Output probabilities sigmoid(bias): 0.5, 0.95, 0.05, 0.85 -> two of four pixels are gray.
        model.net.decoder[2].bias.copy_(torch.logit(torch.tensor([0.5, 0.95, 0.05, 0.85])))
    scores = model.scores(torch.zeros(3, 1, 2, 2))
    assert torch.allclose(scores["blur"], torch.full((3,), 0.5))
    model.hparams.output_activation = "heaviside"
    assert model.scores(torch.zeros(3, 1, 2, 2))["blur"].sum() == 0


def test_posterior_statistics_and_collapse() -> None:
    model = VariationalAutoencoder(DENSE_2, [1, 2, 2], latent_dim=2)
    with torch.no_grad():
        model.net.encoder[1].weight.abs_()  # positive weights on positive images: no dead ReLU
        for param in [*model.mu.parameters(), *model.logvar.parameters()]:
            param.zero_()
        model.mu.weight[0, 0] = 1.0  # only the first latent dimension depends on the input
        model.logvar.bias.fill_(2 * math.log(0.01))  # sigma = 0.01, as report 000 observed
    images = torch.rand(200, 1, 2, 2, generator=torch.Generator().manual_seed(0)) * 4
    with torch.no_grad():
        stats = {name: value.item() for name, value in model.latent_statistics(images).items()}
    assert stats["active_dims"] == 1
    assert stats["sigma_mean"] == pytest.approx(0.01) and stats["sigma_max"] == pytest.approx(0.01)
    with torch.no_grad():
        model.mu.weight.zero_()
    assert model.latent_statistics(images)["active_dims"] == 0  # posterior collapse


def test_kl_warmup_rises_linearly_in_training_steps_only() -> None:
    """beta * step / kl_warmup_steps in the training steps (read at each batch), beta elsewhere."""
    import pytorch_lightning as pl

    from src.models.lightning_module import AutoencoderModule
    from src.models.vae import VariationalAutoencoder

    model = VariationalAutoencoder(
        {"_target_": "src.models.nets.DenseNet", "hidden_dims": [2]}, [1, 2, 2], beta=0.5, kl_warmup_steps=4
    )
    weights: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:  # noqa: ANN001
            weights.append(module.model.kl_weight(trainer.global_step))

    images = torch.tensor([[0, 0, 1, 1], [1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 0, 1]], dtype=torch.float32)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images.view(4, 1, 2, 2)), batch_size=4
    )
    trainer = pl.Trainer(
        max_steps=6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Record()],
    )
    trainer.fit(AutoencoderModule(model), loader)
    assert weights == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5, 0.5])
    model.eval()
    assert model.kl_weight() == 0.5


def test_leaky_output_and_standardised_inputs_work_in_pixel_space_and_drop_bernoulli_scores() -> None:
    """With standardised inputs the net sees (x - m) / s and its pixel output is the activation
    mapped back; the Bernoulli negative ELBO is no score for such a decoder; a sigmoid cannot
    reach standardised pixels, so that combination is refused by name."""
    from src.errors import ConfigValueError
    from src.models.vae import VariationalAutoencoder

    net = {"_target_": "src.models.nets.DenseNet", "hidden_dims": [4]}
    options = {"reconstruction": "mse", "pixel_mean": 0.25, "pixel_std": 0.5}
    model = VariationalAutoencoder(
        net, [1, 2, 2], final_activation="leaky_relu", standardize_inputs=True, **options
    )
    images = torch.tensor([[0.0, 1.0, 0.5, 0.25]]).view(1, 1, 2, 2)
    assert torch.equal(model.standardized(images), (images - 0.25) / 0.5)
    logits = torch.tensor([-2.0, 0.0, 1.0, 3.0])
    expected = torch.tensor([-0.6, 0.0, 1.0, 3.0]) * 0.5 + 0.25  # leaky slope 0.3, then back to pixels
    assert torch.allclose(model.output(logits), expected)
    assert "neg_elbo" not in model.anomaly_scores and "neg_elbo" not in model.scores(images)
    assert "neg_elbo" in VariationalAutoencoder(net, [1, 2, 2]).scores(images)
    with pytest.raises(ConfigValueError, match="model.final_activation=leaky_relu"):
        VariationalAutoencoder(net, [1, 2, 2], standardize_inputs=True, **options)
    with pytest.raises(ConfigValueError, match="positive model.pixel_std"):
        VariationalAutoencoder(
            net,
            [1, 2, 2],
            final_activation="leaky_relu",
            standardize_inputs=True,
            reconstruction="mse",
            pixel_mean=0.2,
            pixel_std=-1.0,
        )

"""Every config group option composes, and its objects instantiate."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
from hydra.utils import instantiate

from src.models import ClassicalAutoencoder, VariationalAutoencoder

GROUPS = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (GROUPS / group).glob("*.yaml"))


def test_every_group_has_its_options() -> None:
    assert options("data") == ["fashion_mnist", "lines", "lines2x2", "mnist"]
    assert options("model") == ["ca", "vae", "vaegan"]
    assert options("model/net") == ["conv", "dense"]
    assert options("trainer") == ["cpu", "ddp", "default", "gpu"]
    assert options("logger") == ["csv", "none", "tensorboard", "wandb"]


@pytest.mark.parametrize("data", options("data"))
def test_data_configs_instantiate(make_config, data: str) -> None:
    cfg = make_config(f"data={data}")
    datamodule = instantiate(cfg.data)
    assert datamodule.name == data
    assert list(datamodule.image_shape) == list(cfg.data.image_shape)


@pytest.mark.parametrize("model", ["ca", "vae", "vaegan"])
@pytest.mark.parametrize("net", ["dense", "conv"])
def test_model_configs_instantiate(make_config, model: str, net: str) -> None:
    cfg = make_config(f"model={model}", f"model/net={net}", "data=mnist")
    module = instantiate(cfg.model)
    assert isinstance(module, VariationalAutoencoder if model != "ca" else ClassicalAutoencoder)
    assert module.hparams.latent_dim == 16  # conf/tuning/mnist.yaml
    assert type(module.net).__name__ == {"dense": "DenseNet", "conv": "ConvNet"}[net]


def test_lines_defaults_are_report_000s_ca(make_config) -> None:
    module = instantiate(make_config().model)
    widths = [
        (layer.in_features, layer.out_features) for layer in module.modules() if hasattr(layer, "in_features")
    ]
    # 1024 -> 2 (ReLU) -> 1 (linear bottleneck) -> 2 (ReLU) -> 1024, in module registration order.
    assert sorted(widths) == sorted([(1024, 2), (1, 2), (2, 1024), (2, 1)])


@pytest.mark.parametrize("trainer", ["cpu", "default", "ddp"])
def test_trainer_configs_instantiate(make_config, trainer: str) -> None:
    cfg = make_config(f"trainer={trainer}", "trainer.accelerator=cpu")
    assert isinstance(instantiate(cfg.trainer, logger=False), pl.Trainer)


def test_gpu_trainer_composes(make_config) -> None:
    cfg = make_config("trainer=gpu")
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.devices == 1


@pytest.mark.parametrize("logger", options("logger"))
def test_logger_configs_instantiate(make_config, tmp_path: Path, logger: str, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make_config(f"logger={logger}")
    built = [instantiate(c, save_dir=str(tmp_path)) for c in cfg.logger.values()]
    expected = {
        "none": [],
        "csv": ["CSVLogger"],
        "tensorboard": ["CSVLogger", "TensorBoardLogger"],
        "wandb": ["CSVLogger", "WandbLogger"],
    }[logger]
    assert [type(b).__name__ for b in built] == expected


def test_wandb_is_offline_without_a_key(make_config, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert make_config("logger=wandb").logger.wandb.offline is True
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert make_config("logger=wandb").logger.wandb.offline is False

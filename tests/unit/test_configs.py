"""Every config group composes and instantiates; presets and per-dataset groups are chosen."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from src.errors import ConfigValueError, UserError
from src.models.ca import ClassicalAutoencoder
from src.models.vae import VariationalAutoencoder
from src.pipeline.config import BOOLEANS, CONFIG_DIR, check_config
from src.pipeline.run import Run
from src.values import parse_bool

GROUPS = CONFIG_DIR


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (GROUPS / group).glob("*.yaml"))


def test_every_group_has_its_options() -> None:
    assert options("data") == ["fashion_mnist", "lines", "lines2x2", "mnist"]
    assert options("model") == ["ca", "vae", "vaegan"]
    assert options("model/net") == ["conv", "dense"]
    assert options("trainer") == ["cpu", "ddp", "default", "gpu"]
    assert options("logger") == ["csv", "none", "tensorboard", "wandb"]
    assert options("callbacks") == ["default", "early_stopping"]
    assert options("debug") == ["fast", "limit", "overfit", "profile"]
    assert options("paths") == ["default"]
    assert options("evaluations") == ["common", "fashion_mnist", "lines", "lines2x2", "mnist"]


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
        "wandb": ["CSVLogger", "WandbRunLogger"],
    }[logger]
    assert [type(b).__name__ for b in built] == expected


def test_wandb_mode_follows_wandb_and_the_credentials_of_its_server(monkeypatch, tmp_path: Path) -> None:
    """WANDB_MODE wins; otherwise online (None: wandb's default) wherever wandb finds credentials
    for the server it is configured for, a self-hosted one included, and offline where it finds none."""
    import wandb

    from src.reporting.wandb import wandb_mode

    netrc = tmp_path / "netrc"
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    wandb.teardown()
    assert wandb_mode() == "offline"
    netrc.write_text(f"machine wandb.example.org\n  login user\n  password {'x' * 40}\n")
    netrc.chmod(0o600)
    assert wandb_mode() is None
    monkeypatch.setenv("WANDB_BASE_URL", "https://api.wandb.ai")  # credentials for another host only
    wandb.teardown()
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "y" * 40)
    assert wandb_mode() is None
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() is None  # wandb's own mode
    wandb.teardown()


@pytest.mark.parametrize("data", ["lines", "lines2x2", "mnist", "fashion_mnist"])
def test_every_dataset_gets_its_ood_config(make_config, data: str) -> None:
    cfg = make_config(f"data={data}")
    assert cfg.ood.enabled == (data != "lines2x2")
    assert cfg.ood.threshold.method == "percentile" and cfg.ood.threshold.percentile == 99
    other = {"mnist": "fashion_mnist", "fashion_mnist": "mnist"}
    if data in other:
        assert cfg.ood.sets[0] == other[data]


@pytest.mark.parametrize(
    ("experiment", "data", "model", "score"),
    [
        ("ood_mnist_vae", "mnist", "VariationalAutoencoder", "neg_elbo"),
        ("ood_mnist_ca", "mnist", "ClassicalAutoencoder", "recon_bce"),
        ("ood_fashion_vae", "fashion_mnist", "VariationalAutoencoder", "neg_elbo_ic"),
        ("anomaly_lines_ca", "lines", "ClassicalAutoencoder", "recon_mse"),
        ("anomaly_lines_vae", "lines", "VariationalAutoencoder", "neg_elbo"),
    ],
)
def test_experiment_presets_compose(make_config, experiment: str, data: str, model: str, score: str) -> None:
    cfg = make_config(f"experiment={experiment}")
    assert cfg.data.name == data and cfg.model._target_.endswith(model)
    assert cfg.ood.score == score and cfg.name == experiment


def test_report_000s_dense_widths_do_not_leak_into_the_conv_net(make_config) -> None:
    for data in ("lines", "lines2x2"):
        assert make_config(f"data={data}").model.net.hidden_dims == [2]
        assert make_config(f"data={data}", "model.latent_dim=3").model.latent_dim == 3
    conv = make_config("data=lines", "model/net=conv")
    assert conv.model.net.hidden_dims == [] and conv.model.latent_dim == 1
    assert make_config("data=mnist").model.net.hidden_dims == [512, 256]


@pytest.mark.parametrize(
    ("data", "evaluations"),
    [
        ("lines", ["heaviside", "line_outcomes", "latent_statistics", "ood"]),
        ("lines2x2", ["census", "initial_state", "solution", "latent_statistics", "ood"]),
        ("mnist", ["latent_statistics", "ood", "split_losses", "interpolation"]),
        ("fashion_mnist", ["latent_statistics", "ood", "split_losses", "interpolation"]),
    ],
)
def test_each_dataset_declares_its_evaluations(make_config, data: str, evaluations: list[str]) -> None:
    cfg = make_config(f"data={data}")
    assert list(cfg.evaluations) == evaluations
    for spec in cfg.evaluations.values():
        assert callable(get_class(spec._target_))


def test_settings_the_trainer_would_drop_are_refused(make_config) -> None:
    with pytest.raises(
        ConfigValueError, match=r"trainer.callbacks is not used.*\+callbacks.<name>._target_="
    ):
        check_config(make_config("+trainer.callbacks=[]"))
    with pytest.raises(ConfigValueError, match="trainer.logger is not used"):
        check_config(make_config("+trainer.logger=false"))
    check_config(make_config())


@pytest.mark.parametrize(
    ("debug", "key", "value"),
    [
        ("fast", "fast_dev_run", True),
        ("limit", "limit_train_batches", 5),
        ("overfit", "overfit_batches", 1),
        ("profile", "profiler", "simple"),
    ],
)
def test_debug_presets_set_the_trainer(make_config, debug: str, key: str, value: object) -> None:
    assert make_config(f"debug={debug}").trainer[key] == value


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["ood.sets=[hflip,rotate]"], r"ood.sets: unknown set\(s\) \['rotate'\]; choose from"),
        (["data=mnist", "ood.sets=[mnist]"], "ood.sets holds 'mnist', the training dataset itself"),
        (
            ["ood.score=neg_elbo"],
            r"ood.score='neg_elbo' is not a score of this model; choose from \['recon_mse'",
        ),
        (["model=vae", "ood.score=neg_elbo_iw"], "needs latent samples: set ood.samples=16"),
        (["ood.samples=-1"], r"ood.samples must be a whole number >= 0"),
        (["ood.threshold.method=median"], "ood.threshold.method must be one of"),
        (["ood.threshold.percentile=101"], r"ood.threshold.percentile must be in \[0, 100\]"),
        (["ood.threshold.method=fixed"], "needs a value: set ood.threshold.value=<number>"),
        (["trainer.max_epochs=0"], "trainer.max_epochs=0 trains nothing"),
        (["data.batch_size=0"], "data.batch_size must be a whole number >= 1, got 0"),
    ],
)
def test_config_errors_are_caught_before_training(make_config, tmp_path: Path, overrides, message) -> None:
    cfg = make_config(*overrides)
    with pytest.raises(UserError, match=message):
        check_config(cfg)
        Run(cfg, tmp_path / "run").check_evaluations()


def test_model_scores_of_a_vae_pass_the_check(make_config, tmp_path: Path) -> None:
    for score in ("neg_elbo", "neg_elbo_ic", "kl", "png_bits"):
        Run(make_config("model=vae", f"ood.score={score}"), tmp_path).check_evaluations()
    Run(make_config("model=vae", "ood.score=neg_elbo_iw_ic", "ood.samples=4"), tmp_path).check_evaluations()


@pytest.mark.parametrize("data", ["mnist", "fashion_mnist"])
def test_the_benchmark_scores_the_held_back_sets_only_in_its_final_stage(make_config, data: str) -> None:
    development = make_config("experiment=oodbench", f"data={data}").ood.sets
    final = make_config("experiment=oodbench", f"data={data}", "near_ood.stage=final").ood.sets
    assert list(final) == ["cyrillic", "symbols"]
    assert not set(final) & set(development) and {"hflip", "rot180", "latin"} <= set(development)


# Keys whose value may be a boolean or something else (Lightning's and W&B's own), and Hydra's.
NOT_ONLY_BOOLEAN = {"trainer.fast_dev_run", "logger.wandb.log_model", "model._recursive_"}


def _boolean_keys(node: object, prefix: str = "") -> set[str]:
    if isinstance(node, dict):
        return {key for name, value in node.items() for key in _boolean_keys(value, f"{prefix}{name}.")}
    return {prefix.removesuffix(".")} if isinstance(node, bool) else set()


@pytest.mark.parametrize(
    "overrides",
    [[], ["model=vae", "data=mnist", "logger=wandb", "debug=fast"], ["experiment=census_lines_ca"]],
)
def test_every_boolean_of_conf_is_parsed(make_config, overrides: list[str]) -> None:
    values = OmegaConf.to_container(make_config(*overrides), resolve=False)
    del values["hydra"]
    assert _boolean_keys(values) - NOT_ONLY_BOOLEAN <= set(BOOLEANS)


@pytest.mark.parametrize(
    "overrides, single, members",
    [
        ([], False, False),
        (["compile=true"], True, True),
        (["experiment=census_lines_ca"], False, True),  # a single run of the preset stays eager
        (["experiment=census_lines_ca", "compile_members=false"], False, False),
    ],
)
def test_compile_members_follows_compile_unless_set(
    make_config, overrides: list[str], single: bool, members: bool
) -> None:
    cfg = make_config(*overrides)
    assert parse_bool("compile", cfg.compile) is single
    assert parse_bool("compile_members", cfg.compile_members) is members

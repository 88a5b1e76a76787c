"""Training in-process: every model x net x dataset for a few steps; seeds; checkpoints."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from src.evaluation.census import OUTCOMES
from src.pipeline.checkpoints import load_model
from src.pipeline.run import Run
from src.pipeline.training import train
from tests.helpers import (
    FAST,
    SMALL_DATA,
    TEST_KEYS,
    VAE_KEYS,
    VAEGAN_KEYS,
    needs_shared_mnist,
)


def _cases() -> list:
    cases = []
    for data in SMALL_DATA:
        # The VAE-GAN on Fashion-MNIST would repeat its MNIST case (same loader, same shapes).
        for model in ("ca", "vae", "vaegan") if data != "fashion_mnist" else ("ca", "vae"):
            for net in ("dense", "conv"):
                marks = [needs_shared_mnist] if "mnist" in data else []
                cases.append(pytest.param(data, model, net, marks=marks, id=f"{data}-{model}-{net}"))
    return cases


@pytest.mark.parametrize(("data", "model", "net"), _cases())
def test_every_model_net_and_dataset_trains(
    make_config, tmp_path: Path, data: str, model: str, net: str
) -> None:
    overrides = [f"data={data}", f"model={model}", f"model/net={net}", *FAST, *SMALL_DATA[data]]
    if data == "lines2x2":
        overrides.append("trainer.max_epochs=3")
    cfg = make_config(*overrides)
    if net == "conv" and data == "lines2x2":
        with pytest.raises(ValueError, match="divisible by 4; this dataset's images are 2x2"):
            train(Run(cfg, tmp_path / "run"))
        return
    metrics = train(Run(cfg, tmp_path / "run"))
    expected = TEST_KEYS | {"ca": set(), "vae": VAE_KEYS, "vaegan": VAEGAN_KEYS}[model]
    assert expected <= metrics.keys()
    assert all(torch.isfinite(torch.tensor(metrics[key])) for key in expected)
    assert 0 <= metrics["test/recon_mse"] <= 1 and -1 <= metrics["test/cosine_similarity"] <= 1
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written == pytest.approx(metrics, nan_ok=True)  # a cosine of an all-zero output is nan
    for name in (
        "config.yaml",
        "history.csv",
        "reconstructions.png",
        "loss_curves.png",
        "checkpoints/last.ckpt",
    ):
        assert (tmp_path / "run" / name).is_file(), name
    assert (tmp_path / "run" / "samples.png").is_file() == (model != "ca")
    if model != "ca":
        assert metrics["train/active_dims"] in range(metrics["parameters"])
    if data == "lines":  # report 000's Heaviside swap, evaluated on the same trained model
        assert metrics["test/heaviside/blur"] == 0 and 0 <= metrics["test/sigmoid/blur"] <= 1
        assert metrics["test/sigmoid/recon_mse"] == pytest.approx(metrics["test/recon_mse"], rel=1e-5)
        assert (tmp_path / "run" / "heaviside.png").is_file()
    if data == "lines2x2":
        assert metrics["test/outcome"] in OUTCOMES


def test_seed_fixes_the_initial_weights_and_zero_is_a_seed(make_config, tmp_path: Path) -> None:
    import pytorch_lightning as pl

    def initial_weights(seed: int) -> torch.Tensor:
        cfg = make_config(f"seed={seed}")
        pl.seed_everything(cfg.seed)
        return torch.cat([p.flatten() for p in instantiate(cfg.model).parameters()])

    assert torch.equal(initial_weights(0), initial_weights(0))
    assert not torch.equal(initial_weights(0), initial_weights(1))


def test_checkpoint_reloads_with_plain_hparams(make_config, tmp_path: Path) -> None:

    cfg = make_config("model=vae", *FAST, *SMALL_DATA["lines"])
    train(Run(cfg, tmp_path / "run"))
    model = load_model(tmp_path / "run" / "checkpoints" / "last.ckpt")[0]
    assert model.hparams.net == {
        "_target_": "src.models.nets.DenseNet",
        "hidden_dims": [2],
        "activation": "relu",
    }
    assert model.reconstruct(torch.rand(2, 1, 32, 32)).shape == (2, 1, 32, 32)


def test_callbacks_from_config_really_run(make_config, tmp_path: Path) -> None:
    """A project callback and one of Lightning's own, each added on the command line by class."""
    probe = tmp_path / "epochs.txt"
    cfg = make_config(
        *FAST, *SMALL_DATA["lines"], "trainer.max_epochs=3", "logger=csv", "figures=false",
        "+callbacks.probe._target_=tests.callback_probe.EpochProbe", f"+callbacks.probe.path={probe}",
        "+callbacks.lr_monitor._target_=pytorch_lightning.callbacks.LearningRateMonitor",
        "+callbacks.lr_monitor.logging_interval=step",
    )  # fmt: skip
    train(Run(cfg, tmp_path / "run"))
    assert probe.read_text().split() == ["0", "1", "2"]
    with (tmp_path / "run" / "csv" / "metrics.csv").open() as handle:
        rates = [float(row["lr-Adam"]) for row in csv.DictReader(handle) if row.get("lr-Adam")]
    assert rates and set(rates) == {1e-3}


def test_dropping_a_default_callback_drops_its_file(make_config, tmp_path: Path) -> None:
    train(
        Run(make_config(*FAST, *SMALL_DATA["lines"], "figures=false", "~callbacks.history"), tmp_path / "run")
    )
    assert not (tmp_path / "run" / "history.csv").exists()
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_debug_fast_runs_the_whole_pipeline_on_one_batch(make_config, tmp_path: Path) -> None:
    metrics = train(Run(make_config("model=vae", "debug=fast", *FAST[1:], "figures=false"), tmp_path / "run"))
    assert metrics["steps"] == 1 and "test/neg_elbo" in metrics and "ood/noise/auroc" in metrics


def test_closing_line_names_the_folder_and_the_headline_metrics(make_config, tmp_path: Path) -> None:
    cfg = make_config("data=lines2x2", "headline=[test/outcome, 'ood/*/auroc']")
    line = Run(cfg, tmp_path / "run").headline(
        {"test/outcome": "optimal", "test/loss": 0.5, "ood/noise/auroc": 0.912345, "ood/noise/f1_ood": 0.5}
    )
    assert line == f"Run folder {tmp_path / 'run'}: ood/noise/auroc 0.9123, test/outcome optimal"

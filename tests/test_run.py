"""Training end to end: every model x net x dataset for a few steps, and `python -m src.run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from src.census import OUTCOMES
from src.run import train
from tests.conftest import FAST, PROJECT_ROOT, SHARED_DATASETS, needs_shared_mnist

TEST_KEYS = {"test/recon_mse", "test/recon_bce", "test/cosine_similarity", "test/loss"}
VAE_KEYS = {"test/kl", "test/neg_elbo"}
VAEGAN_KEYS = VAE_KEYS | {"test/disc_feature_error"}
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
            train(cfg, tmp_path / "run")
        return
    metrics = train(cfg, tmp_path / "run")
    expected = TEST_KEYS | {"ca": set(), "vae": VAE_KEYS, "vaegan": VAEGAN_KEYS}[model]
    assert expected <= metrics.keys()
    assert all(torch.isfinite(torch.tensor(metrics[key])) for key in expected)
    assert 0 <= metrics["test/recon_mse"] <= 1 and -1 <= metrics["test/cosine_similarity"] <= 1
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written == pytest.approx(metrics)
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
    from src.models import VariationalAutoencoder

    cfg = make_config("model=vae", *FAST, *SMALL_DATA["lines"])
    train(cfg, tmp_path / "run")
    model = VariationalAutoencoder.load_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert model.hparams.net == {"_target_": "src.nets.DenseNet", "hidden_dims": [2], "activation": "relu"}
    assert model.reconstruct(torch.rand(2, 1, 32, 32)).shape == (2, 1, 32, 32)


def _run(*overrides: str, cwd: Path = PROJECT_ROOT) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "src.run", *overrides],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_src_run_writes_the_run_folder(tmp_path: Path) -> None:
    run_dir = tmp_path / "my-run"
    process = _run("model=vae", "logger=wandb", *FAST[:-1], *SMALL_DATA["lines"], f"hydra.run.dir={run_dir}")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics.keys() >= TEST_KEYS | VAE_KEYS
    assert (run_dir / "reconstructions.png").stat().st_size > 1000
    assert "model:" in (run_dir / "config.yaml").read_text()
    # W&B wrote a complete offline run inside the run folder, ready for `wandb sync`.
    # Offline, W&B keeps config and metrics in the run's transaction log (protobuf, strings raw).
    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    (log_file,) = offline_run.glob("run-*.wandb")
    records = log_file.read_bytes()
    assert b"model.beta" in records or b"beta" in records
    assert b"test/recon_mse" in records and json.dumps(metrics["test/recon_mse"]).encode() in records
    figures = list(run_dir.glob("*.png"))
    assert len(list((offline_run / "files" / "media" / "images").glob("figures_*.png"))) == len(figures) == 8
    sync = subprocess.run(
        [str(Path(sys.executable).parent / "wandb"), "sync", "--dry-run", str(offline_run)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "WANDB_API_KEY": "x" * 40},
    )
    assert "Would sync 1 run(s)" in sync.stdout + sync.stderr


def test_jobs_started_together_get_their_own_folders(tmp_path: Path) -> None:
    overrides = [
        "data=lines2x2",
        "trainer.max_epochs=1",
        "test=false",
        "logger=none",
        f"output_root={tmp_path}",
    ]
    processes = [_run(*overrides) for _ in range(2)]
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output
    folders = list((tmp_path / "runs").iterdir())
    assert len(folders) == 2
    assert all((folder / "metrics.json").is_file() for folder in folders)


def test_bad_override_fails_with_the_key_named(tmp_path: Path) -> None:
    process = _run("model.reconstruction=l1", "logger=none", f"output_root={tmp_path}")
    output, _ = process.communicate(timeout=300)
    assert process.returncode != 0
    assert "model.reconstruction must be one of ['mse', 'bce'], got 'l1'" in output
    (error_file,) = (tmp_path / "runs").glob("*/error.txt")
    assert "model.reconstruction" in error_file.read_text()


@pytest.mark.parametrize(
    ("setting", "nvml_loads", "left"),
    [("1", False, None), ("1", True, "1"), ("0", False, "0"), (None, False, None)],
)
def test_nvml_check_is_dropped_only_where_nvml_cannot_load(
    monkeypatch: pytest.MonkeyPatch, setting: str | None, nvml_loads: bool, left: str | None
) -> None:
    import ctypes

    from src.run import NVML_CHECK, drop_failing_nvml_check

    def load(name: str) -> object:
        if not nvml_loads:
            raise OSError(f"{name}: cannot open shared object file")
        return object()

    monkeypatch.setattr(ctypes, "CDLL", load)
    if setting is None:
        monkeypatch.delenv(NVML_CHECK, raising=False)
    else:
        monkeypatch.setenv(NVML_CHECK, setting)
    drop_failing_nvml_check()
    assert os.environ.get(NVML_CHECK) == left


def test_dropping_the_nvml_check_keeps_torchs_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where NVML is missing, torch falls back to the CUDA runtime's count: the same answer either way."""
    from src.run import NVML_CHECK, drop_failing_nvml_check

    monkeypatch.setenv(NVML_CHECK, "1")
    with_nvml_check = torch.cuda.is_available()
    drop_failing_nvml_check()
    assert torch.cuda.is_available() == with_nvml_check

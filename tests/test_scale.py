"""Speed, scale-out and long runs: throughput records, the benchmark's hand loop, the joblib and
submitit launchers, DDP on two CPU processes, the Optuna search, resuming from a checkpoint,
src.eval, torch.compile and bf16 mixed precision."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from src.bench import EXAMPLE_VAE, ExampleVAE, lightning_loop
from src.eval import evaluate
from src.run import seeded_model, train
from tests.conftest import FAST, PROJECT_ROOT, SHARED_DATASETS, compose_config, needs_shared_mnist

# Tiny line images in shuffled minibatches of 8.
TINY_LINES = [
    "data=lines",
    "data.image_size=8",
    "data.n_train=32",
    "data.n_val=16",
    "data.n_test=16",
    "data.batch_size=8",
    "model.net.hidden_dims=[8]",
]
QUIET = ["logger=none", "trainer.enable_progress_bar=false", "figures=false"]


def _run(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`python -m src.run <overrides>` in a fresh process, its folders under tmp_path."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", "src.run", *overrides, f"output_root={tmp_path}"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _sweep_jobs(tmp_path: Path) -> tuple[Path, list[Path]]:
    (sweep_dir,) = (tmp_path / "multiruns").iterdir()
    return sweep_dir, sorted(path.parent for path in sweep_dir.glob("*/.hydra"))


def _last_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_joblib_multirun_runs_jobs_in_parallel(tmp_path: Path) -> None:
    process = _run(
        tmp_path,
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=4",
        "seed=0,1,2,3",
        "data=lines2x2",
        "trainer.max_epochs=100",
        "trainer.check_val_every_n_epoch=50",
        "+hydra.callbacks.probe._target_=tests.job_probe.JobProbe",
        *QUIET,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    sweep_dir, jobs = _sweep_jobs(tmp_path)
    probes = [json.loads((job / "probe.json").read_text()) for job in jobs]
    assert len(probes) == 4
    assert len({probe["pid"] for probe in probes}) == 4  # four worker processes
    # Jobs ran at the same time: the most jobs running at one moment (some job's start) is >= 2.
    concurrent = max(sum(p["start"] <= q["start"] < p["end"] for p in probes) for q in probes)
    assert concurrent >= 2, probes
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["n_jobs"] == 4 and summary["n_failed"] == 0


def test_submitit_local_runs_a_two_job_sweep(tmp_path: Path) -> None:
    process = _run(
        tmp_path,
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        "model=ca,vae",
        "data=lines2x2",
        "trainer.max_epochs=5",
        *QUIET,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    sweep_dir, jobs = _sweep_jobs(tmp_path)
    targets = {OmegaConf.load(job / "config.yaml").model._target_ for job in jobs}
    assert targets == {"src.models.ClassicalAutoencoder", "src.models.VariationalAutoencoder"}
    assert all("test/recon_mse" in json.loads((job / "metrics.json").read_text()) for job in jobs)
    assert (sweep_dir / ".submitit").is_dir()  # submitit's own logs: the jobs went through it
    assert json.loads((sweep_dir / "summary.json").read_text())["n_jobs"] == 2


def test_ddp_on_two_cpu_processes_reports_the_single_process_keys(tmp_path: Path) -> None:
    common = ["data=lines2x2", "trainer.max_epochs=3", *QUIET]
    single = _run(tmp_path / "single", "trainer=cpu", *common)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = _run(tmp_path / "ddp", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *common)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in ddp.stdout + ddp.stderr and "gloo" in ddp.stdout + ddp.stderr
    (single_run,) = (tmp_path / "single" / "runs").iterdir()
    (ddp_run,) = (tmp_path / "ddp" / "runs").iterdir()
    single_metrics = json.loads((single_run / "metrics.json").read_text())
    ddp_metrics = json.loads((ddp_run / "metrics.json").read_text())
    assert any(key.startswith("test/") for key in ddp_metrics)
    assert sorted(ddp_metrics) == sorted(single_metrics)
    assert ddp_metrics["epochs"] == single_metrics["epochs"] == 3


def test_optuna_search_minimises_the_validation_loss(tmp_path: Path) -> None:
    process = _run(
        tmp_path,
        "-m",
        "hparams_search=vae_optuna",
        "hydra.sweeper.n_trials=4",
        "data=lines2x2",
        "trainer.max_epochs=3",
        "trainer.check_val_every_n_epoch=1",
        *QUIET,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    sweep_dir, jobs = _sweep_jobs(tmp_path)
    assert len(jobs) == 4
    val_losses = [json.loads((job / "metrics.json").read_text())["val/loss"] for job in jobs]
    for job in jobs:
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert {o.split("=")[0] for o in overrides} >= {
            "model.beta",
            "model.latent_dim",
            "model.optimizer.lr",
        }
        assert OmegaConf.load(job / "config.yaml").model._target_ == "src.models.VariationalAutoencoder"
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    # The objective Optuna saw is each job's val/loss: its best value is the lowest of them.
    assert results["best_value"] == pytest.approx(min(val_losses), rel=1e-6)


def test_resumed_training_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    """A VAE (sampled z) on shuffled minibatches: resuming must restore weights, optimiser state,
    loops and the random streams to reproduce the uninterrupted run exactly."""
    base = ["model=vae", *TINY_LINES, *FAST, "figures=false", "test=false"]
    whole = tmp_path / "whole"
    expected = train(compose_config([*base, "trainer.max_epochs=4"], whole), whole)
    half = tmp_path / "half"
    train(compose_config([*base, "trainer.max_epochs=2"], half), half)
    resumed = tmp_path / "resumed"
    ckpt = half / "checkpoints" / "last.ckpt"
    got = train(compose_config([*base, "trainer.max_epochs=4", f"ckpt_path={ckpt}"], resumed), resumed)
    assert got["epochs"] == expected["epochs"] == 4 and got["steps"] == expected["steps"] == 16
    for key in ("train/loss", "val/loss", "train/kl"):
        assert got[key] == expected[key], key
    weights, resumed_weights, halfway = _last_weights(whole), _last_weights(resumed), _last_weights(half)
    assert not all(torch.equal(halfway[key], weights[key]) for key in weights)  # training moved on
    for key, value in weights.items():
        assert torch.equal(resumed_weights[key], value), key


def test_missing_resume_checkpoint_names_the_fix(make_config, tmp_path: Path) -> None:
    cfg = make_config("data=lines2x2", *FAST, f"ckpt_path={tmp_path / 'nope.ckpt'}")
    with pytest.raises(FileNotFoundError, match="does not exist.*ckpt_path=null"):
        train(cfg, tmp_path / "run")


def test_eval_reruns_the_test_of_a_saved_model(make_config, tmp_path: Path) -> None:
    trained = tmp_path / "trained"
    original = train(make_config("data=lines2x2", *FAST, "trainer.max_epochs=3"), trained)
    again = tmp_path / "again"
    ckpt = trained / "checkpoints" / "last.ckpt"
    metrics = evaluate(OmegaConf.create({"ckpt_path": str(ckpt), "figures": True}), again)
    assert json.loads((again / "metrics.json").read_text()) == metrics
    test_keys = {key for key in original if key.startswith("test/")}
    assert test_keys and {key for key in metrics if key.startswith("test/")} == test_keys
    for key in test_keys:  # the CA evaluates deterministically: the same model gives the same numbers
        assert metrics[key] == (
            pytest.approx(original[key], rel=1e-6) if isinstance(metrics[key], float) else original[key]
        )
    assert metrics["steps"] == original["steps"] == 3
    assert (again / "reconstructions.png").is_file() and (again / "loss_curves.png").is_file()
    assert OmegaConf.load(again / "config.yaml").ckpt_path == str(ckpt.resolve())


def test_eval_overrides_change_the_evaluation_not_the_model(make_config, tmp_path: Path) -> None:
    trained = tmp_path / "trained"
    original = train(make_config(*TINY_LINES, *FAST, "figures=false"), trained)
    assert original["ood/score"] == "recon_mse"
    again = tmp_path / "again"
    eval_cfg = {
        "ckpt_path": str(trained / "checkpoints" / "last.ckpt"),
        "figures": False,
        "overrides": {"ood": {"score": "recon_bce"}},
    }
    metrics = evaluate(OmegaConf.create(eval_cfg), again)
    assert metrics["ood/score"] == OmegaConf.load(again / "config.yaml").ood.score == "recon_bce"
    assert metrics["test/recon_mse"] == pytest.approx(original["test/recon_mse"], rel=1e-6)


def test_eval_without_the_runs_config_names_the_fix(tmp_path: Path) -> None:
    stray = tmp_path / "elsewhere" / "checkpoints" / "model.ckpt"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="config.yaml not found.*copy that run's config.yaml"):
        evaluate(OmegaConf.create({"ckpt_path": str(stray), "figures": False}), tmp_path / "eval")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate(OmegaConf.create({"ckpt_path": str(tmp_path / "no.ckpt"), "figures": False}), tmp_path / "e")


def test_bf16_mixed_precision_and_compile_train_on_cpu(
    make_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled = []
    real_compile = torch.compile

    def eager_compile(model: torch.nn.Module) -> torch.nn.Module:
        # Dynamo traces the model for real; the eager backend skips inductor's C++ build (slow on CPU).
        compiled.append(model)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    cfg = make_config(
        "model=vae",
        "data=lines2x2",
        *FAST,
        "trainer.max_epochs=2",
        "trainer.precision=bf16-mixed",
        "trainer.check_val_every_n_epoch=1",
        "compile=true",
    )
    metrics = train(cfg, tmp_path / "run")
    assert len(compiled) == 1
    assert metrics["steps"] == 2 and torch.isfinite(torch.tensor(metrics["val/loss"]))
    # Checkpoints keep the plain parameter names, loadable without compiling.
    assert not any("_orig_mod" in key for key in _last_weights(tmp_path / "run"))


def test_training_throughput_is_recorded_per_epoch(make_config, tmp_path: Path) -> None:
    """train/images_per_s per epoch in history.csv, their median after the warm-up epoch in metrics."""
    cfg = make_config(*TINY_LINES, *FAST, "figures=false", "test=false", "trainer.max_epochs=3")
    metrics = train(cfg, tmp_path / "run")
    with (tmp_path / "run" / "history.csv").open() as handle:
        rates = [float(row["train/images_per_s"]) for row in csv.DictReader(handle)]
    assert len(rates) == 3 and all(rate > 0 for rate in rates)
    assert metrics["train/images_per_s"] == pytest.approx(statistics.median(rates[1:]))


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


def test_training_terms_logged_lean_match_their_steps(make_config, tmp_path: Path) -> None:
    """The lean training log: `train/<term>_step` on every trainer.log_every_n_steps-th step only,
    and the epoch value in history.csv is the image-weighted mean of that epoch's step values (36
    images in batches of 8: the last batch has 4)."""
    cfg = make_config(
        *TINY_LINES, *FAST, "data.n_train=36", "figures=false", "test=false", "logger=csv",
        "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
    )  # fmt: skip
    run_dir = tmp_path / "run"
    train(cfg, run_dir)
    with next(run_dir.glob("**/metrics.csv")).open() as handle:
        steps = [row for row in csv.DictReader(handle) if row.get("train/loss_step")]
    with (run_dir / "history.csv").open() as handle:
        history = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in steps] == list(range(10))  # 5 batches x 2 epochs
    for epoch, row in enumerate(history):
        losses = [float(step["train/loss_step"]) for step in steps[5 * epoch : 5 * epoch + 5]]
        for term in ("loss", "recon"):
            values = [float(step[f"train/{term}_step"]) for step in steps[5 * epoch : 5 * epoch + 5]]
            weighted = (8 * sum(values[:4]) + 4 * values[4]) / 36
            assert float(row[f"train/{term}"]) == pytest.approx(weighted, rel=1e-5)
        assert losses != [losses[0]] * 5

    cfg.trainer.log_every_n_steps = 3
    train(cfg, tmp_path / "sparse")
    with next((tmp_path / "sparse").glob("**/metrics.csv")).open() as handle:
        logged = [int(row["step"]) for row in csv.DictReader(handle) if row.get("train/loss_step")]
    assert logged == [2, 5, 8]


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
    """`framework_interleaved`: src.run.train on the framework path's config, one hand step after
    each of its steps (one epoch: MNIST's 55 000 training images in batches of 128 = 430 steps)."""
    from src.bench import framework_interleaved

    monkeypatch.setenv("DATA_ROOT", str(SHARED_DATASETS))
    images = torch.rand(256, 1, 28, 28)
    figures = framework_interleaved(images, epochs=1)
    assert figures["hand_steps"] == 430
    assert figures["hand_step_over_trainer_step"] == pytest.approx(
        figures["hand_step_ms"] / figures["trainer_step_ms"]
    )

"""Multiruns end to end: the batched launcher against one-by-one runs, failing jobs, MNIST, W&B groups."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from src.pipeline.checkpoints import load_model
from tests.helpers import SHARED_DATASETS, needs_shared_mnist, src_run

pytestmark = pytest.mark.slow


SWEEP = ["experiment=census_ca_2x2", "seed=range(0,20)", "trainer.max_epochs=1000", "model.optimizer.lr=0.01"]


def _multirun(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, Path]:
    process = src_run("-m", *overrides, f"paths.output_root={tmp_path}")
    (sweep_dir,) = (tmp_path / "multiruns").iterdir()
    return process, sweep_dir


def _outcomes(sweep_dir: Path) -> dict[int, str]:
    return {
        (m := json.loads(path.read_text()))["seed"]: m["test/outcome"]
        for path in sweep_dir.glob("*/metrics.json")
    }


def test_batched_launcher_agrees_with_one_by_one_runs(tmp_path: Path) -> None:
    one_by_one, one_by_one_dir = _multirun(tmp_path / "basic", *SWEEP)
    assert one_by_one.returncode == 0, one_by_one.stderr[-3000:]
    batched, batched_dir = _multirun(tmp_path / "batched", *SWEEP, "hydra/launcher=batched")
    assert batched.returncode == 0, batched.stderr[-3000:]
    assert "training 20 seeds" in batched.stdout
    single, together = _outcomes(one_by_one_dir), _outcomes(batched_dir)
    assert sorted(single) == sorted(together) == list(range(20))
    agreeing = sum(single[seed] == together[seed] for seed in single)
    assert agreeing >= 19, (single, together)
    assert len(set(single.values())) >= 3  # a sample with several outcomes, not a trivial agreement
    for sweep_dir in (one_by_one_dir, batched_dir):
        summary = json.loads((sweep_dir / "summary.json").read_text())
        assert summary["n_jobs"] == 20 and summary["n_failed"] == 0
        assert sum(summary["counts"]["test/outcome"].values()) == 20
        assert (sweep_dir / "summary.md").is_file() and (sweep_dir / "summary.png").stat().st_size > 1000
    # Both paths leave the same files in a job folder.
    assert {p.name for p in (batched_dir / "3").iterdir()} >= {
        ".hydra",
        "config.yaml",
        "metrics.json",
        "checkpoints",
    }
    assert (
        json.loads((batched_dir / "3" / "metrics.json").read_text())["checkpoint"] == "checkpoints/last.ckpt"
    )
    reloaded = load_model(batched_dir / "3" / "checkpoints" / "last.ckpt")[0]
    assert reloaded.hparams.net["hidden_dims"] == [2]


def test_sweep_with_a_failing_job_is_summarised(tmp_path: Path) -> None:
    process, sweep_dir = _multirun(
        tmp_path,
        "data=lines2x2",
        "trainer.max_epochs=2",
        "logger=none",
        "model.reconstruction=mse,l1",
        "figures=false",
    )
    assert process.returncode == 1
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["n_jobs"] == 2 and summary["n_failed"] == 1
    assert "model.reconstruction must be one of" in summary["failed"]["1"]
    assert (sweep_dir / "0" / "metrics.json").is_file()
    assert "test/outcome" in summary["counts"]


@needs_shared_mnist
def test_mnist_sweep_is_summarised(tmp_path: Path) -> None:
    process, sweep_dir = _multirun(
        tmp_path,
        "data=mnist",
        "model=vae",
        f"data.root={SHARED_DATASETS}",
        "seed=0,1",
        "logger=none",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        "figures=false",
    )
    assert process.returncode == 0, process.stderr[-3000:]
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["n_jobs"] == 2
    assert summary["metrics"]["test/neg_elbo"]["n"] == 2
    assert summary["metrics"]["test/neg_elbo"]["min"] <= summary["metrics"]["test/neg_elbo"]["mean"]
    assert "test/neg_elbo" in (sweep_dir / "summary.md").read_text()
    assert (sweep_dir / "summary.png").stat().st_size > 1000


def test_wandb_sweep_runs_share_the_sweep_group(tmp_path: Path) -> None:
    process, sweep_dir = _multirun(
        tmp_path, "data=lines2x2", "trainer.max_epochs=2", "logger=wandb", "seed=0,1", "figures=false"
    )
    assert process.returncode == 0, process.stderr[-3000:]
    job_runs = [next((sweep_dir / job / "wandb").glob("offline-run-*")) for job in ("0", "1")]
    (summary_run,) = (sweep_dir / "wandb").glob("offline-run-*")
    for run in [*job_runs, summary_run]:
        (records,) = run.glob("run-*.wandb")
        assert sweep_dir.name.encode() in records.read_bytes()  # the group
    assert b"summary/frequencies" in next(summary_run.glob("run-*.wandb")).read_bytes()
    assert job_runs[0].name != job_runs[1].name  # one W&B run per job

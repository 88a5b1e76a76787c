"""Scale-out through existing engines: joblib, submitit, DDP on two CPU processes, Optuna."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from tests.helpers import src_run, src_run_started

pytestmark = pytest.mark.slow


QUIET = ["logger=none", "trainer.enable_progress_bar=false", "figures=false"]


def _run(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`python -m src.run <overrides>` in a fresh process, its folders under tmp_path."""
    return src_run(*overrides, f"paths.output_root={tmp_path}")


def _sweep_jobs(tmp_path: Path) -> tuple[Path, list[Path]]:
    (sweep_dir,) = (tmp_path / "multiruns").iterdir()
    return sweep_dir, sorted(path.parent for path in sweep_dir.glob("*/.hydra"))


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
    assert targets == {"src.models.ca.ClassicalAutoencoder", "src.models.vae.VariationalAutoencoder"}
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
        assert OmegaConf.load(job / "config.yaml").model._target_ == "src.models.vae.VariationalAutoencoder"
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    # The objective Optuna saw is each job's val/loss: its best value is the lowest of them.
    assert results["best_value"] == pytest.approx(min(val_losses), rel=1e-6)


def test_an_interrupted_optuna_search_resumes_into_the_same_study(tmp_path: Path) -> None:
    """The study lives in its SQLite file: a search stopped by SIGTERM after two trials and started
    again with the same command runs the trials it lacks, and the study holds both parts' trials."""
    import optuna

    search = ["-m", "hparams_search=vae_optuna", "hydra.sweeper.n_trials=4", "data=lines2x2",
              "trainer.max_epochs=3", "trainer.check_val_every_n_epoch=1", *QUIET,
              f"paths.output_root={tmp_path}"]  # fmt: skip
    first = src_run_started(*search)
    deadline = time.monotonic() + 300
    while len(list(tmp_path.glob("multiruns/*/*/metrics.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    output, _ = first.communicate(timeout=120)
    assert first.returncode in (143, -signal.SIGTERM), output[-3000:]  # in a trial, or between two
    storage = f"sqlite:///{tmp_path}/optuna/vae_optuna_lines2x2.db"

    def complete() -> list:
        trials = optuna.load_study(study_name="vae_optuna_lines2x2", storage=storage).trials
        return [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]

    first_jobs = len(complete())  # one killed after its metrics.json, before Optuna was told, is RUNNING
    assert 1 <= first_jobs < 4
    second = src_run(*search)
    assert second.returncode == 0, second.stderr[-3000:]
    assert len(complete()) == 4
    # The resumed sampler did not replay the first part's suggestions.
    assert len({tuple(sorted(t.params.items())) for t in complete()}) == 4
    sweeps = sorted((tmp_path / "multiruns").iterdir())
    assert len(sweeps) == 2
    second_jobs = sorted(p.parent for p in sweeps[1].glob("*/metrics.json"))
    assert len(second_jobs) == 4 - first_jobs  # only what the study lacked
    results = yaml.safe_load((sweeps[1] / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(min(t.value for t in complete()), rel=1e-6)
    # Started again, the finished study runs nothing and still says what is best.
    third = src_run(*search)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "0 to run" in third.stdout + third.stderr
    assert len(complete()) == 4

"""Multiruns end to end: the batched launcher against one-by-one runs, failing jobs, MNIST, W&B groups."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from src.pipeline.checkpoints import load_model
from tests.helpers import (
    PROJECT_ROOT,
    SHARED_DATASETS,
    SMALL_DATA,
    TINY_LINES,
    history_rows,
    needs_shared_mnist,
    src_run,
    src_run_started,
)

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


def test_a_sweep_of_two_widths_compares_them(tmp_path: Path) -> None:
    """Two configurations over the same seeds: summary.json compares them, the optimal outcome's
    frequencies by a difference of proportions and test/loss by P(improvement), each with its
    interval, and summary.md opens with the headline table."""
    process, sweep_dir = _multirun(
        tmp_path,
        "experiment=census_ca_2x2",
        "model.net.hidden_dims=[2],[4]",
        "seed=range(0,6)",
        "trainer.max_epochs=100",
        "hydra/launcher=batched",
    )
    assert process.returncode == 0, process.stderr[-3000:]
    summary = json.loads((sweep_dir / "summary.json").read_text())
    (compared,) = summary["comparisons"]
    assert "hidden_dims=[2]" in compared["a"] and "hidden_dims=[4]" in compared["b"]
    assert compared["differs_in"] == ["model.net.hidden_dims"]
    groups = summary["groups"]
    optimal = compared["outcomes"]["test/outcome"]["optimal"]
    assert optimal["a"] == groups[compared["a"]]["frequencies"]["test/outcome"]["optimal"]
    assert optimal["value"] == optimal["b"] - optimal["a"]
    low, high = optimal["ci95"]
    assert -1 <= low <= optimal["value"] <= high <= 1 and high - low > 0.1  # 6 seeds: a wide interval
    loss = compared["metrics"]["test/loss"]
    assert loss["better"] == "lower" and loss["difference"]["paired"] and loss["n"] == [6, 6]
    improvement = loss["probability_of_improvement"]
    assert 0 <= improvement["ci95"][0] <= improvement["value"] <= improvement["ci95"][1] <= 1
    text = (sweep_dir / "summary.md").read_text()
    assert text.index("## Headline") < text.index("## Comparisons") < text.index("### test/outcome")


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
        "ood.neighbours.k=0",  # the full-size neighbour search is benchmark work, not this test's
        "ood.max_images=1000",  # and so is scoring 65000 images per job
    )
    assert process.returncode == 0, process.stderr[-3000:]
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["n_jobs"] == 2
    assert summary["metrics"]["test/neg_elbo"]["n"] == 2
    assert summary["metrics"]["test/neg_elbo"]["min"] <= summary["metrics"]["test/neg_elbo"]["mean"]
    assert "test/neg_elbo" in (sweep_dir / "summary.md").read_text()
    assert (sweep_dir / "summary.png").stat().st_size > 1000


def test_chunks_of_a_batched_sweep_run_as_submitit_jobs(tmp_path: Path) -> None:
    """max_members splits the sweep; each chunk is a local submitit job (a process of its own), and
    the sweep has every job folder and its summary as if it had trained in one process."""
    process, sweep_dir = _multirun(
        tmp_path,
        "experiment=census_ca_2x2",
        "seed=range(0,4)",
        "trainer.max_epochs=50",
        "hydra/launcher=batched",
        "hydra.launcher.max_members=2",
        "hydra.launcher.executor=local",
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert "2 chunk(s)" in process.stdout + process.stderr
    assert sorted(p.name for p in (sweep_dir / "batched").iterdir()) == ["0-1", "2-3"]
    assert len(list((sweep_dir / ".submitit").glob("*/*_result.pkl"))) == 2
    assert sorted(_outcomes(sweep_dir)) == [0, 1, 2, 3]
    assert json.loads((sweep_dir / "summary.json").read_text())["n_jobs"] == 4


@needs_shared_mnist
def test_batched_ood_sweep_gives_table2_with_intervals(tmp_path: Path) -> None:
    process, sweep_dir = _multirun(
        tmp_path,
        "experiment=ood_mnist_vae",
        "model/net=dense",
        f"data.root={SHARED_DATASETS}",
        "seed=range(0,3)",
        "hydra/launcher=batched",
        "logger=none",
        "figures=false",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=20",
        "trainer.limit_val_batches=4",
        "ood.neighbours.k=0",
        "ood.max_images=1000",  # evenly spaced over each set: the table's shape, not full-size scoring
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert "training 3 seeds" in process.stdout + process.stderr
    table = (sweep_dir / "table2.md").read_text()
    assert "| fashion_mnist | OOD (fashion_mnist) |" in table and "FPR at 95% TPR" in table
    auroc = json.loads((sweep_dir / "summary.json").read_text())["metrics"]["ood/fashion_mnist/auroc"]
    assert auroc["n"] == 3 and auroc["ci95"][0] <= auroc["mean"] <= auroc["ci95"][1]
    # A member is an ordinary run: its checkpoint loads through the one loader.
    model = load_model(sweep_dir / "1" / "checkpoints" / "last.ckpt")[0]
    assert model.hparams.latent_dim == 16


def test_a_killed_batched_sweep_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    """A batched sweep killed mid-training, started again with the same command and sweep folder,
    resumes its chunk from <sweep>/batched/<chunk>/last.ckpt and ends with the metrics an
    uninterrupted sweep gives."""
    sweep = [
        "experiment=census_lines_ca",
        "seed=range(0,3)",
        "trainer.max_epochs=300",
        "compile_members=false",
    ]
    sweep += ["hydra/launcher=batched", *SMALL_DATA["lines"], "~evaluations.ood"]
    whole = src_run("-m", *sweep, f"hydra.sweep.dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]
    resumed_dir = tmp_path / "resumed"
    started = src_run_started("-m", *sweep, f"hydra.sweep.dir={resumed_dir}")
    checkpoint = resumed_dir / "batched" / "0-2" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not checkpoint.is_file() and started.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a few more epochs, so that the kill lands mid-training
    started.send_signal(signal.SIGKILL)
    started.wait()
    assert checkpoint.is_file() and not list(resumed_dir.glob("*/metrics.json"))
    again = src_run("-m", *sweep, f"hydra.sweep.dir={resumed_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    for job in ("0", "1", "2"):
        expected = json.loads((tmp_path / "whole" / job / "metrics.json").read_text())
        got = json.loads((resumed_dir / job / "metrics.json").read_text())
        for key in ("test/loss", "val/loss", "train/loss", "test/lines/correct_fraction", "steps"):
            assert got[key] == pytest.approx(expected[key], rel=1e-6), (job, key)
        # The thinned history of the epochs before the kill came with the chunk's checkpoint.
        got_rows, expected_rows = history_rows(resumed_dir / job), history_rows(tmp_path / "whole" / job)
        assert [row["epoch"] for row in got_rows] == [row["epoch"] for row in expected_rows], job
        for got_row, expected_row in zip(got_rows, expected_rows, strict=True):
            assert {k: float(v) for k, v in got_row.items()} == pytest.approx(
                {k: float(v) for k, v in expected_row.items()}, rel=1e-6
            ), (job, got_row["epoch"])


def test_batched_job_folders_named_by_seed_are_each_their_own_seed(tmp_path: Path) -> None:
    sweep = ["experiment=census_ca_2x2", "seed=range(0,3)", "trainer.max_epochs=20", "hydra/launcher=batched"]
    process = src_run("-m", *sweep, f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=seed_${seed}")
    assert process.returncode == 0, process.stderr[-3000:]
    for seed in range(3):
        assert json.loads((tmp_path / f"seed_{seed}" / "metrics.json").read_text())["seed"] == seed


def test_a_bad_value_in_a_batched_sweep_is_one_line_and_exit_status_2(tmp_path: Path) -> None:
    process, _ = _multirun(
        tmp_path,
        "data=lines2x2",
        "model.reconstruction=l1",
        "seed=0,1",
        "hydra/launcher=batched",
        "logger=none",
    )
    assert process.returncode == 2, process.stderr[-3000:]
    assert "error: model.reconstruction must be one of" in process.stderr
    assert "Traceback" not in process.stderr


def _entry(module: str, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *arguments],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        timeout=600,
    )


def test_a_batched_sweep_is_quiet_and_its_members_work_with_src_eval_and_src_score(tmp_path: Path) -> None:
    """A 20-seed batched sweep prints a few lines, not Lightning's banner per member; a member's
    folder is an ordinary run: src.eval reproduces its test metrics through the single-model path,
    and src.score scores images with its OOD threshold."""
    sweep = [*TINY_LINES, "model=vae", "seed=range(0,20)", "trainer.max_epochs=2", "hydra/launcher=batched"]
    process, sweep_dir = _multirun(tmp_path, *sweep, "logger=none", "figures=false", "print_config=false")
    assert process.returncode == 0, process.stderr[-3000:]
    lines = (process.stdout + process.stderr).splitlines()
    assert len(lines) <= 8, lines
    banners = ("GPU available", "TPU available", "Tip:", "srun")
    assert not any(banner in line for line in lines for banner in banners)
    member = sweep_dir / "7"
    metrics = json.loads((member / "metrics.json").read_text())
    assert metrics["seed"] == 7 and "ood/threshold" in metrics
    evaluated = _entry(
        "src.eval", f"ckpt_path={member / 'checkpoints' / 'last.ckpt'}", "figures=false",
        f"paths.output_root={tmp_path / 'eval'}",
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    (eval_dir,) = (tmp_path / "eval" / "runs").iterdir()
    again = json.loads((eval_dir / "metrics.json").read_text())
    # Deterministic test metrics (those that do not sample) agree with the batched members' own.
    for key in ("test/recon_mse", "test/recon_bce", "test/kl", "test/neg_elbo", "ood/threshold"):
        assert abs(again[key] - metrics[key]) <= 1e-5 * max(1.0, abs(metrics[key])), key
    images = np.random.default_rng(0).integers(0, 256, size=(5, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    scored = _entry(
        "src.score", f"ckpt_path={member / 'checkpoints' / 'last.ckpt'}", f"input={tmp_path / 'x.npy'}",
        f"output={tmp_path / 'scores.csv'}",
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert len((tmp_path / "scores.csv").read_text().splitlines()) == 1 + 5


@pytest.mark.parametrize("launcher", ["hydra/launcher=basic", "hydra/launcher=batched"])
def test_a_sweep_started_again_skips_finished_jobs_resumes_interrupted_and_reruns_failed(
    tmp_path: Path, launcher: str
) -> None:
    sweep = ["-m", "experiment=census_ca_2x2", "seed=range(0,3)", "trainer.max_epochs=50", launcher]
    first = src_run(*sweep, f"hydra.sweep.dir={tmp_path}")
    assert first.returncode == 0, first.stderr[-3000:]
    metrics = {job: json.loads((tmp_path / job / "metrics.json").read_text()) for job in ("0", "1", "2")}
    finished_at = (tmp_path / "0" / "metrics.json").stat().st_mtime_ns
    (tmp_path / "1" / "error.txt").write_text("Traceback ...\nRuntimeError: a node died\n")  # failed
    (tmp_path / "2" / "metrics.json").unlink()  # killed after its last checkpoint: interrupted
    again = src_run(*sweep, f"hydra.sweep.dir={tmp_path}")
    said = again.stdout + again.stderr
    assert again.returncode == 0, said[-3000:]
    assert (
        "started again: 1 finished (skipped), 1 interrupted (resumed from last.ckpt), "
        "1 failed (trained afresh), 0 new"
    ) in said
    assert (tmp_path / "0" / "metrics.json").stat().st_mtime_ns == finished_at
    assert "a node died" in (tmp_path / "1" / "error.before-rerun.txt").read_text()
    assert not (tmp_path / "1" / "error.txt").exists()
    for job in ("1", "2"):
        got = json.loads((tmp_path / job / "metrics.json").read_text())
        assert got["test/loss"] == metrics[job]["test/loss"] and got["steps"] == metrics[job]["steps"], job
    assert json.loads((tmp_path / "summary.json").read_text())["n_failed"] == 0
    # Another config in the same folder is refused (tests/e2e/test_folder_owners.py); with
    # overwrite=true every job is replaced.
    changed = src_run(*sweep, "trainer.max_epochs=60", "overwrite=true", f"hydra.sweep.dir={tmp_path}")
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert "3 of another config replaced" in changed.stdout + changed.stderr
    assert all(
        json.loads((tmp_path / job / "metrics.json").read_text())["epochs"] == 60 for job in ("0", "1", "2")
    )
    assert json.loads((tmp_path / "0" / "metrics.json").read_text())["steps"] == 60

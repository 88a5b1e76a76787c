"""The convergence census: outcome classes, merge reasons, Wilson intervals, sweep summaries and
the batched launcher against one-by-one runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hydra_plugins.batched_launcher.batched_launcher import BatchedLauncher
from src.census import classify_outcome, outcome_metrics
from src.models import ClassicalAutoencoder
from src.run import seeded_model
from src.summary import summarise, wilson_interval
from tests.conftest import PROJECT_ROOT, SHARED_DATASETS, compose_config, needs_shared_mnist

INPUTS = torch.tensor([[0, 0, 1, 1], [1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 0, 1]], dtype=torch.float)


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        (torch.full((4, 4), 0.55), "all_gray"),
        (INPUTS * 0.8 + 0.1, "optimal"),
        (1 - INPUTS, "other"),  # distinct but wrong outputs
        (
            torch.stack(
                [INPUTS[0], INPUTS[1], (INPUTS[2] + INPUTS[3]) / 2, (INPUTS[2] + INPUTS[3]) / 2 + 0.05]
            ),
            "one_merged_pair",
        ),
        (torch.stack([INPUTS[0], INPUTS[0], INPUTS[2], INPUTS[2]]), "two_merged_pairs"),
        (torch.stack([INPUTS[0], INPUTS[0], INPUTS[0], INPUTS[3]]), "other"),  # three merged
    ],
)
def test_outcome_classes(outputs: torch.Tensor, expected: str) -> None:
    assert classify_outcome(INPUTS, outputs) == expected


def test_one_gray_image_is_not_all_gray() -> None:
    outputs = INPUTS.clone()
    outputs[0] = 0.5
    assert classify_outcome(INPUTS, outputs) == "other"


def test_dead_first_layer_merges_two_images_and_is_named() -> None:
    """Report 000's failure: two inputs give negative values in every first-layer neuron."""
    model = ClassicalAutoencoder({"_target_": "src.nets.DenseNet", "hidden_dims": [2]}, [1, 2, 2])
    first = model.net.encoder[1]
    with torch.no_grad():
        # Pixel order UL, UR, BL, BR: 0011 and 1010 both get -1 in both units; 1100 and 0101 do not.
        first.weight.copy_(torch.tensor([[1.0, 2.0, -1.0, -1.0], [1.0, 2.0, -1.0, -1.0]]))
        first.bias.zero_()
        model.bottleneck.weight.fill_(1.0)
        decoder_in, decoder_out = model.net.decoder[0], model.net.decoder[2]
        decoder_in.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        decoder_in.bias.zero_()
        decoder_out.weight.copy_(torch.tensor([[4.0, 0.0], [-4.0, 0.0], [-1.0, 0.0], [2.0, 0.0]]))
        decoder_out.bias.copy_(torch.tensor([-5.0, 3.0, 3.0, -1.0]))
    images = INPUTS.view(4, 1, 2, 2)
    metrics = outcome_metrics(model, images)
    assert metrics["test/outcome"] == "one_merged_pair"
    assert metrics["test/merged_images"] == "0011=1010"
    assert metrics["test/merge_reason"] == "encoder.2 ReLU: all units zero"
    assert metrics["test/gray_pixels"] == 0  # outputs 0.007, 0.95, 0.27, 0.047, 0.73, ...: none near 0.5


def test_wilson_interval_matches_published_values() -> None:
    # Wilson (1927) / Newcombe (1998) table: 0/10 -> [0, 0.2775]; 5/10 -> [0.2366, 0.7634]; 81/263.
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_summary_of_known_jobs() -> None:
    jobs = [
        {
            "dir": str(i),
            "overrides": [f"seed={i}"],
            "error": None,
            "metrics": {"test/outcome": outcome, "test/recon_mse": mse, "seed": i},
        }
        for i, (outcome, mse) in enumerate([("optimal", 0.0), ("all_gray", 0.25), ("optimal", 0.05)])
    ]
    jobs.append({"dir": "3", "overrides": ["seed=3"], "metrics": None, "error": "ValueError: boom"})
    summary = summarise(jobs)
    assert (summary["n_jobs"], summary["n_failed"]) == (4, 1)
    assert summary["failed"] == {"3": "ValueError: boom"}
    assert summary["counts"]["test/outcome"] == {
        "all_gray": 1,
        "optimal": 2,
        "one_merged_pair": 0,
        "two_merged_pairs": 0,
        "other": 0,
    }
    assert summary["frequencies"]["test/outcome"]["optimal"] == pytest.approx(2 / 3)
    assert summary["ci95"]["test/outcome"]["optimal"] == pytest.approx(list(wilson_interval(2, 3)))
    assert summary["metrics"]["test/recon_mse"] == pytest.approx(
        {"mean": 0.1, "std": 0.1322876, "min": 0.0, "max": 0.25, "n": 3}
    )
    assert "seed" not in summary["metrics"]


SWEEP = ["experiment=census_ca_2x2", "seed=range(0,20)", "trainer.max_epochs=1000", "model.optimizer.lr=0.01"]


def _multirun(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, Path]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "WANDB_MODE": "offline"}
    process = subprocess.run(
        [sys.executable, "-m", "src.run", "-m", *overrides, f"output_root={tmp_path}"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
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
    reloaded = ClassicalAutoencoder.load_from_checkpoint(batched_dir / "3" / "checkpoints" / "last.ckpt")
    assert reloaded.hparams.net["hidden_dims"] == [2]


def test_batched_members_start_from_the_single_runs_weights(tmp_path: Path) -> None:
    template = compose_config(["experiment=census_ca_2x2"], tmp_path)
    for seed in range(20):
        single = seeded_model(compose_config(["experiment=census_ca_2x2", f"seed={seed}"], tmp_path))
        member = seeded_model(BatchedLauncher._task_config(template, seed))
        for (name, a), (_, b) in zip(single.named_parameters(), member.named_parameters(), strict=True):
            assert torch.equal(a, b), (seed, name)
    assert not torch.equal(
        seeded_model(BatchedLauncher._task_config(template, 0)).bottleneck.weight,
        seeded_model(BatchedLauncher._task_config(template, 1)).bottleneck.weight,
    )


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

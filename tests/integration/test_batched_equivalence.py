"""A batched member is its single run: the same initial weights, minibatches, noise and batch-norm
statistics, so the same losses step by step and the same end-of-run metrics.

Tolerances: the dense runs on the line images are bit-identical for dozens of steps (vmap happens to
sum in the same order), so they are held to 1e-5 relative at the end. Elsewhere only the
floating-point summation order differs (batched matrix products, batch-norm reductions), a 1e-7
relative difference per step that Adam amplifies (it normalises every gradient element, so a tiny
element can change sign): the first steps to 1e-5 on the lines, 1e-4 on MNIST (its conv net's
batch norm sums over more elements), the end of a short run to 2e-2 (relative, or absolute for
quantities near zero). Metrics that rank or threshold scores (ood/*: AUROC, AUPR, F1 at a
threshold) move in steps of one image when two near-equal scores swap, so they are held to 0.01
absolute (two images in 200)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import Callback

from hydra_plugins.batched_launcher.batched_launcher import BatchedLauncher
from src.pipeline.batched import member_jobs, train_members
from src.pipeline.config import MemberConfigs, compose_config
from src.pipeline.evaluation_run import read_history
from src.pipeline.run import Run
from src.pipeline.training import seeded_model, train
from tests.helpers import SHARED_DATASETS, needs_shared_mnist

SEEDS = (0, 1, 2)
QUIET = ["logger=none", "figures=false", "print_config=false", "trainer.enable_progress_bar=false"]


class StepLosses(Callback):
    """Every training step's loss, for a single run or for each member of a batched one."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.losses.append(outputs.get("member_losses", outputs["loss"]).detach().clone())


def _compare(
    overrides: list[str], tmp_path: Path, first_steps: int, end_tolerance: float, step_tolerance: float = 1e-5
) -> None:
    base = [*overrides, *QUIET]
    singles, single_steps = {}, {}
    for seed in SEEDS:
        recorder = StepLosses()
        singles[seed] = train(
            Run(compose_config([*base, f"seed={seed}"], tmp_path), tmp_path / f"single{seed}"), [recorder]
        )
        single_steps[seed] = torch.stack(recorder.losses)
    template = compose_config(base, tmp_path)
    cfgs = MemberConfigs(BatchedLauncher._task_config(template, None), SEEDS)
    recorder = StepLosses()
    members = train_members(cfgs, tmp_path / "chunk", [recorder])
    member_steps = torch.stack(recorder.losses)  # (steps, members)
    folders = [tmp_path / f"member{seed}" for seed in SEEDS]
    # Every member is tested and evaluated at once, then each folder written by its own job.
    jobs = member_jobs(members, cfgs, range(len(SEEDS)), folders)
    compared = 0
    for index, seed in enumerate(SEEDS):
        torch.testing.assert_close(
            member_steps[:first_steps, index], single_steps[seed][:first_steps], rtol=step_tolerance, atol=0
        )
        metrics = jobs[index](Run(cfgs[index], folders[index]))
        single = singles[seed]
        # The same history: the same epochs kept, the same curves.
        member_history = read_history(folders[index] / "history.csv")
        single_history = read_history(tmp_path / f"single{seed}" / "history.csv")
        assert [row["epoch"] for row in member_history] == [row["epoch"] for row in single_history]
        for member_row, single_row in zip(member_history, single_history, strict=True):
            for key in member_row.keys() & single_row.keys() - {"train/images_per_s"}:
                assert math.isclose(
                    member_row[key], single_row[key], rel_tol=end_tolerance, abs_tol=end_tolerance
                ) or (math.isnan(member_row[key]) and math.isnan(single_row[key])), (seed, key)
        assert metrics["steps"] == single["steps"] and metrics["epochs"] == single["epochs"]
        # Every metric of the single run, but its throughput and memory (a chunk's, not a member's).
        assert set(single) - set(metrics) <= {"train/images_per_s", "train/peak_gpu_memory_mib"}, seed
        for key, value in single.items():
            if not isinstance(value, float) or "time" in key or "per_s" in key or key not in metrics:
                continue
            # Quantities near zero (the latent mean) get the same bound in absolute terms.
            absolute = max(0.01, end_tolerance) if key.startswith("ood/") else end_tolerance
            assert math.isclose(metrics[key], value, rel_tol=end_tolerance, abs_tol=absolute), (seed, key)
            compared += 1
    assert compared > 20 * len(SEEDS)  # train, val and test metrics were compared, not a handful
    # The members are different runs (different seeds), not copies of one.
    assert not torch.equal(member_steps[:, 0], member_steps[:, 1])


def test_members_start_from_the_single_runs_weights_on_every_net(tmp_path: Path) -> None:
    for overrides in (["data=lines", "model=vae"], ["data=lines", "model=ca", "model/net=conv"]):
        template = compose_config(overrides, tmp_path)
        for seed in SEEDS:
            single = seeded_model(compose_config([*overrides, f"seed={seed}"], tmp_path))
            member = seeded_model(MemberConfigs(BatchedLauncher._task_config(template, None), [seed])[0])
            for (name, a), (_, b) in zip(
                single.state_dict().items(), member.state_dict().items(), strict=True
            ):
                assert torch.equal(a, b), (overrides, seed, name)


@pytest.mark.parametrize("model", ["ca", "vae"])
def test_dense_members_on_the_line_images_equal_their_single_runs(model: str, tmp_path: Path) -> None:
    _compare(
        ["data=lines", f"model={model}", "trainer.max_epochs=3"], tmp_path, first_steps=40, end_tolerance=1e-5
    )


@needs_shared_mnist
@pytest.mark.parametrize("net", ["dense", "conv"])
def test_vae_members_on_mnist_equal_their_single_runs(net: str, tmp_path: Path) -> None:
    _compare(
        [
            "data=mnist",
            f"data.root={SHARED_DATASETS}",
            "model=vae",
            f"model/net={net}",
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=8",
            "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=2",
            "~evaluations.ood",
        ],
        tmp_path,
        first_steps=3,
        end_tolerance=2e-2,
        step_tolerance=1e-4,
    )

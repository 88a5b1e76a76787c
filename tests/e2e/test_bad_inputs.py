"""Bad inputs and faults as a user meets them, through the entry points themselves: each one exits
with status 2, says in one line what is wrong with which key or file and how to fix it, shows no
traceback, and leaves every file already written as it was."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from src.pipeline.scoring_run import command as score_command
from tests.helpers import FAST, SHARED_DATASETS, fingerprint, needs_shared_mnist, one_line_failure
from tests.helpers import entry_point as _entry_point

pytestmark = pytest.mark.slow


RUN_CASES = [
    (
        ["model.reconstruction=l1"],
        "model.reconstruction must be one of ['mse', 'bce', 'discretized_logistic'], got 'l1'",
    ),
    (["model.reduction=max"], "model.reduction must be one of ['mean', 'sum'], got 'max'"),
    (["model.output_activation=relu"], "model.output_activation must be one of"),
    (["model.init=x"], "model.init must be one of ['glorot_uniform', 'torch']"),
    (["model.latent_dim=0"], "model.latent_dim must be at least 1, got 0"),
    (["model=vae", "model.beta=-1"], "model.beta must be non-negative, got -1"),
    (["model.net.activation=gelu"], "model.net.activation must be one of"),
    (["data=lines2x2", "model/net=conv"], "so height and width must be divisible by 4"),
    (["model/net=conv", "model.net.strides=[3,1,1]"], "model.net.strides may hold only 1 and 2"),
    (["model/net=conv", "model.net.channels=[4]"], "model.net.channels and model.net.strides need the same"),
    (["data.image_size=1"], "data.image_size must be at least 2, got 1"),
    (["model=vaegan", "model.gamma=-1"], "model.gamma must be non-negative"),
    (["model=vaegan", "model.feature_layer=99"], "model.feature_layer must index one of"),
    (["model=vaegan", "+model.optimizers.generator.lr=1"], "model.optimizers may only name"),
    (
        ["model.optimizer.lr=abc"],
        "model.optimizer.lr must be int or float, got 'abc': e.g. model.optimizer.lr=1e-3",
    ),
    (["seed=abc"], "seed must be int or null, got 'abc'"),
    (["model.latent_dim=1.5"], "model.latent_dim must be int, got 1.5"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 trains nothing"),
    (["data.batch_size=0"], "data.batch_size must be a whole number >= 1, got 0"),
    (["+trainer.callbacks=[]"], "trainer.callbacks is not used"),
    (["+trainer.logger=false"], "trainer.logger is not used"),
    (["ood.sets=[hflip,rotate]"], "ood.sets: unknown set(s) ['rotate']"),
    (["ood.score=neg_elbo"], "ood.score='neg_elbo' is not a score of this model"),
    (["model=vae", "ood.score=neg_elbo_iw"], "needs latent samples: set ood.samples=16"),
    (["ood.samples=-1"], "ood.samples must be a whole number >= 0"),
    (["ood.threshold.method=median"], "ood.threshold.method must be one of"),
    (["ood.threshold.percentile=101"], "ood.threshold.percentile must be in [0, 100]"),
    (["ood.threshold.method=fixed"], "needs a value: set ood.threshold.value=<number>"),
    (["ckpt_path=/nowhere/last.ckpt"], "ckpt_path=/nowhere/last.ckpt does not exist"),
]


@pytest.mark.parametrize(
    ("overrides", "message"), RUN_CASES, ids=lambda case: " ".join(case) if isinstance(case, list) else ""
)
def test_src_run_refuses_bad_config_in_one_line(
    finished_run: Path, capsys, overrides: list[str], message: str
) -> None:
    root = finished_run.parent.parent
    before = fingerprint(root)
    status, stderr = _entry_point("src.run", [*FAST, *overrides, f"paths.output_root={root}"], capsys)
    one_line_failure(status, stderr, message)
    error_file = Path(stderr.strip().splitlines()[-1].rsplit("(traceback in ", 1)[1].rstrip(")"))
    assert error_file.parent.parent == root / "runs" and "Traceback" in error_file.read_text()
    after = fingerprint(root)
    assert {key: after[key] for key in before} == before
    assert not (error_file.parent / "checkpoints").exists()  # refused before training


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.reconstrution=mse"],
            "model.reconstrution is not a config key; did you mean model.reconstruction",
        ),
        (["trainer.max_epoch=3"], "trainer.max_epoch is not a config key; did you mean trainer.max_epochs"),
        (["-m", "model=ca,vae", "model.latnt_dim=3"], "did you mean model.latent_dim?"),
    ],
)
def test_a_misspelt_key_gets_the_nearest_keys(tmp_path: Path, capsys, overrides: list, message: str) -> None:
    status, stderr = _entry_point("src.run", [*overrides, f"paths.output_root={tmp_path}"], capsys)
    assert status == 2 and message in stderr.strip().splitlines()[-1], stderr[-2000:]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "multiruns").exists()


@needs_shared_mnist
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([f"data.root={SHARED_DATASETS}", "data.n_val=0"], "data.n_val must be between 1 and"),
        (
            [f"data.root={SHARED_DATASETS}", "ood.sets=[mnist]"],
            "ood.sets holds 'mnist', the training dataset",
        ),
        (["data.root=/nowhere", "data.download=false"], "MNIST not found in /nowhere/MNIST/raw"),
    ],
)
def test_src_run_refuses_bad_mnist_settings(
    tmp_path: Path, capsys, overrides: list[str], message: str
) -> None:
    status, stderr = _entry_point(
        "src.run", ["data=mnist", *FAST, *overrides, f"paths.output_root={tmp_path}"], capsys
    )
    one_line_failure(status, stderr, message)


@needs_shared_mnist
def test_a_missing_ood_set_stops_the_run_before_training(tmp_path: Path, capsys) -> None:
    """MNIST is there, Fashion-MNIST (the OOD set) is not: refused before the first step."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "MNIST").symlink_to(SHARED_DATASETS / "MNIST")
    arguments = [
        "data=mnist",
        *FAST,
        f"data.root={root}",
        "data.download=false",
        f"paths.output_root={tmp_path}",
    ]
    status, stderr = _entry_point("src.run", arguments, capsys)
    one_line_failure(status, stderr, f"FashionMNIST not found in {root / 'FashionMNIST' / 'raw'}")
    (run,) = (tmp_path / "runs").iterdir()
    assert not (run / "checkpoints").exists()


def _copy_of(finished_run: Path, folder: Path, name: str, content: bytes | None = None) -> Path:
    target = folder / "checkpoints" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(
        content if content is not None else (finished_run / "checkpoints" / "last.ckpt").read_bytes()
    )
    return target


def test_src_eval_refuses_bad_checkpoints(finished_run: Path, tmp_path: Path, capsys) -> None:
    before = fingerprint(finished_run)
    stray = _copy_of(finished_run, tmp_path / "stray", "last.ckpt")
    truncated = _copy_of(
        finished_run,
        finished_run,
        "truncated.ckpt",
        (finished_run / "checkpoints" / "last.ckpt").read_bytes()[:999],
    )
    crafted = finished_run / "checkpoints" / "crafted.ckpt"
    checkpoint = torch.load(finished_run / "checkpoints" / "last.ckpt", weights_only=True)
    torch.save({**checkpoint, "payload": np.dtype("float64")}, crafted)
    cases = [
        (tmp_path / "nowhere.ckpt", "nowhere.ckpt does not exist"),
        (stray, "config.yaml not found"),
        (truncated, "truncated.ckpt (999 bytes) is truncated or not a checkpoint"),
        (crafted, "holds more than tensors and plain values"),
    ]
    for ckpt, message in cases:
        status, stderr = _entry_point(
            "src.eval", [f"ckpt_path={ckpt}", f"paths.output_root={tmp_path}"], capsys
        )
        one_line_failure(status, stderr, message)
    truncated.unlink()
    crafted.unlink()
    assert fingerprint(finished_run) == before


def test_src_score_refuses_bad_arguments(finished_run: Path, tmp_path: Path, capsys) -> None:
    ckpt = finished_run / "checkpoints" / "last.ckpt"
    images = tmp_path / "images.npy"
    np.save(images, np.zeros((3, 2, 2), np.uint8))
    kept = tmp_path / "kept.csv"
    kept.write_text("kept\n")
    np.save(tmp_path / "shape.npy", np.zeros((3, 5), np.uint8))
    base = [f"ckpt_path={ckpt}", f"input={images}"]
    cases = [
        (["input=x.npy"], "missing ['ckpt_path', 'output']"),
        ([*base, f"output={tmp_path / 'o.csv'}", "colour=red"], "unknown arguments ['colour']"),
        ([*base, f"output={kept}"], "exists; give overwrite=true"),
        ([*base, f"output={images}"], "is the input"),
        ([*base, f"output={tmp_path}"], "is a folder"),
        ([*base, f"output={tmp_path / 'o.csv'}", "threshold=abc"], "threshold='abc' is not a float"),
        (
            [*base, f"output={tmp_path / 'o.csv'}", "batch_size=0"],
            "batch_size=0: give a whole number of at least 1",
        ),
        (
            [f"ckpt_path={ckpt}", f"input={tmp_path / 'no.npy'}", f"output={tmp_path / 'o.csv'}"],
            "no.npy does not exist",
        ),
        (
            [f"ckpt_path={ckpt}", f"input={tmp_path / 'shape.npy'}", f"output={tmp_path / 'o.csv'}"],
            "Reshape or resize",
        ),
    ]
    for arguments, message in cases:
        assert score_command(arguments) == 2
        stderr = capsys.readouterr().err
        assert message in stderr and "Traceback" not in stderr, (arguments, stderr)
    assert kept.read_text() == "kept\n" and not (tmp_path / "o.csv").exists()


def test_src_summary_and_src_results_refuse_what_is_not_theirs(
    finished_run: Path, tmp_path: Path, capsys
) -> None:
    one_line_failure(*_entry_point("src.summary", [str(tmp_path)], capsys), "holds no job folders")
    one_line_failure(*_entry_point("src.summary", [], capsys), "usage: python -m src.summary <sweep folder>")
    page = tmp_path / "page.md"
    status, stderr = _entry_point(
        "src.results", ["ood", str(tmp_path / "nope"), "--output", str(page)], capsys
    )
    one_line_failure(status, stderr, "not found:")
    status, stderr = _entry_point("src.results", ["tables", str(finished_run), "--output", str(page)], capsys)
    assert status == 2 and "invalid choice: 'tables'" in stderr and not page.exists()

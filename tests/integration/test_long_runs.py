"""Long runs in-process: resume, src.eval, compile, bf16, throughput and the lean training log."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from src.pipeline.config import compose_config
from src.pipeline.evaluation_run import evaluate_checkpoint
from src.pipeline.run import Run
from src.pipeline.training import train
from tests.helpers import FAST, TINY_LINES


def _last_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_resumed_training_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    """A VAE (sampled z) on shuffled minibatches: resuming must restore weights, optimiser state,
    loops and the random streams to reproduce the uninterrupted run exactly."""
    base = ["model=vae", *TINY_LINES, *FAST, "figures=false", "test=false"]
    whole = tmp_path / "whole"
    expected = train(Run(compose_config([*base, "trainer.max_epochs=4"], whole), whole))
    half = tmp_path / "half"
    train(Run(compose_config([*base, "trainer.max_epochs=2"], half), half))
    resumed = tmp_path / "resumed"
    ckpt = half / "checkpoints" / "last.ckpt"
    got = train(Run(compose_config([*base, "trainer.max_epochs=4", f"ckpt_path={ckpt}"], resumed), resumed))
    assert got["epochs"] == expected["epochs"] == 4 and got["steps"] == expected["steps"] == 16
    for key in ("train/loss", "val/loss", "train/kl"):
        assert got[key] == expected[key], key
    weights, resumed_weights, halfway = _last_weights(whole), _last_weights(resumed), _last_weights(half)
    assert not all(torch.equal(halfway[key], weights[key]) for key in weights)  # training moved on
    for key, value in weights.items():
        assert torch.equal(resumed_weights[key], value), key


def test_a_checkpoint_from_before_the_model_split_loads_and_resumes_to_the_same_result(
    tmp_path: Path,
) -> None:
    """Checkpoints written while the models were LightningModules hold the weights unprefixed; the
    one loader and a resume take them as they take today's (`model.` prefixed) ones."""
    from src.pipeline.checkpoints import load_model

    base = ["model=vae", *TINY_LINES, *FAST, "figures=false", "test=false"]
    half = tmp_path / "half"
    train(Run(compose_config([*base, "trainer.max_epochs=2"], half), half))
    today = torch.load(half / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(name.startswith("model.") for name in today["state_dict"])
    old = half / "checkpoints" / "old.ckpt"
    torch.save(
        {**today, "state_dict": {k.removeprefix("model."): v for k, v in today["state_dict"].items()}}, old
    )
    loaded, _ = load_model(old)
    assert all(
        torch.equal(value, today["state_dict"][f"model.{name}"])
        for name, value in loaded.state_dict().items()
    )
    results = {}
    for name in ("last", "old"):
        folder = tmp_path / f"from_{name}"
        ckpt = half / "checkpoints" / f"{name}.ckpt"
        results[name] = train(
            Run(compose_config([*base, "trainer.max_epochs=4", f"ckpt_path={ckpt}"], folder), folder)
        )
    assert results["old"]["steps"] == results["last"]["steps"] == 16
    assert results["old"]["train/loss"] == results["last"]["train/loss"]
    assert all(
        torch.equal(v, _last_weights(tmp_path / "from_last")[k])
        for k, v in _last_weights(tmp_path / "from_old").items()
    )


def test_missing_resume_checkpoint_names_the_fix(make_config, tmp_path: Path) -> None:
    cfg = make_config("data=lines2x2", *FAST, f"ckpt_path={tmp_path / 'nope.ckpt'}")
    with pytest.raises(FileNotFoundError, match="does not exist.*ckpt_path=null"):
        train(Run(cfg, tmp_path / "run"))


def test_eval_reruns_the_test_of_a_saved_model(make_config, tmp_path: Path) -> None:
    trained = tmp_path / "trained"
    original = train(Run(make_config("data=lines2x2", *FAST, "trainer.max_epochs=3"), trained))
    again = tmp_path / "again"
    ckpt = trained / "checkpoints" / "last.ckpt"
    metrics = evaluate_checkpoint(Run(OmegaConf.create({"ckpt_path": str(ckpt), "figures": True}), again))
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
    original = train(Run(make_config(*TINY_LINES, *FAST, "figures=false"), trained))
    assert original["ood/score"] == "recon_mse"
    again = tmp_path / "again"
    eval_cfg = {
        "ckpt_path": str(trained / "checkpoints" / "last.ckpt"),
        "figures": False,
        "overrides": {"ood": {"score": "recon_bce"}},
    }
    metrics = evaluate_checkpoint(Run(OmegaConf.create(eval_cfg), again))
    assert metrics["ood/score"] == OmegaConf.load(again / "config.yaml").ood.score == "recon_bce"
    assert metrics["test/recon_mse"] == pytest.approx(original["test/recon_mse"], rel=1e-6)


def test_eval_without_the_runs_config_names_the_fix(tmp_path: Path) -> None:
    stray = tmp_path / "elsewhere" / "checkpoints" / "model.ckpt"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="config.yaml not found.*copy that run's config.yaml"):
        evaluate_checkpoint(
            Run(OmegaConf.create({"ckpt_path": str(stray), "figures": False}), tmp_path / "eval")
        )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate_checkpoint(
            Run(OmegaConf.create({"ckpt_path": str(tmp_path / "no.ckpt"), "figures": False}), tmp_path / "e")
        )


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
    metrics = train(Run(cfg, tmp_path / "run"))
    assert len(compiled) == 1
    assert metrics["steps"] == 2 and torch.isfinite(torch.tensor(metrics["val/loss"]))
    # Checkpoints keep the plain parameter names, loadable without compiling.
    assert not any("_orig_mod" in key for key in _last_weights(tmp_path / "run"))


def test_training_throughput_is_recorded_per_epoch(make_config, tmp_path: Path) -> None:
    """train/images_per_s per epoch in history.csv, their median after the warm-up epoch in metrics."""
    cfg = make_config(*TINY_LINES, *FAST, "figures=false", "test=false", "trainer.max_epochs=3")
    metrics = train(Run(cfg, tmp_path / "run"))
    with (tmp_path / "run" / "history.csv").open() as handle:
        rates = [float(row["train/images_per_s"]) for row in csv.DictReader(handle)]
    assert len(rates) == 3 and all(rate > 0 for rate in rates)
    assert metrics["train/images_per_s"] == pytest.approx(statistics.median(rates[1:]))


def test_training_terms_logged_lean_match_their_steps(make_config, tmp_path: Path) -> None:
    """The lean training log: `train/<term>_step` on every trainer.log_every_n_steps-th step only,
    and the epoch value in history.csv is the image-weighted mean of that epoch's step values (36
    images in batches of 8: the last batch has 4)."""
    cfg = make_config(
        *TINY_LINES, *FAST, "data.n_train=36", "figures=false", "test=false", "logger=csv",
        "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
    )  # fmt: skip
    run_dir = tmp_path / "run"
    train(Run(cfg, run_dir))
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
    train(Run(cfg, tmp_path / "sparse"))
    with next((tmp_path / "sparse").glob("**/metrics.csv")).open() as handle:
        logged = [int(row["step"]) for row in csv.DictReader(handle) if row.get("train/loss_step")]
    assert logged == [2, 5, 8]

"""src.score on a trained model: files, folders of PNGs, bad input, the run's K."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from src.data import ood_sets
from src.evaluation import scoring
from src.pipeline.config import compose_config
from src.pipeline.run import Run
from src.pipeline.scoring_run import ScoreInputError, command, load_images, load_run, score_file
from src.pipeline.training import train
from tests.helpers import FAST, PROJECT_ROOT


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VAE trained for two epochs on 64 line images, with its OOD threshold in metrics.json and
    the neighbour baselines."""
    folder = tmp_path_factory.mktemp("score") / "run"
    overrides = ["model=vae", *FAST, "data.n_train=64", "data.n_val=32", "data.n_test=32", "ood.plots=false"]
    overrides += ["ood.neighbours.k=3", "ood.neighbours.reference_images=40"]
    train(Run(compose_config([*overrides, "ood.score=neg_elbo"], folder), folder))
    return folder


def _lines(count: int = 6) -> np.ndarray:
    return (ood_sets.lines_with_blob(count, 32, torch.Generator().manual_seed(1))[:, 0].numpy() * 255).astype(
        np.uint8
    )


def _read(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_scores_a_npy_with_the_runs_score_and_threshold(run_dir: Path, tmp_path: Path) -> None:
    images = _lines()
    np.save(tmp_path / "x.npy", images)
    summary = score_file(run_dir / "checkpoints" / "last.ckpt", tmp_path / "x.npy", tmp_path / "out.csv")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = _read(tmp_path / "out.csv")
    assert [row["id"] for row in rows] == [str(index) for index in range(6)]
    assert summary["score"] == "neg_elbo" and summary["threshold"] == metrics["ood/threshold"]
    model, _, _ = load_run(run_dir / "checkpoints" / "last.ckpt")
    expected = scoring.score_images(model, torch.from_numpy(images).float().div(255).unsqueeze(1))["neg_elbo"]
    scores = torch.tensor([float(row["score"]) for row in rows], dtype=torch.float64)
    assert torch.allclose(scores, expected, rtol=1e-5)
    assert [row["ood"] for row in rows] == [str(int(s > metrics["ood/threshold"])) for s in expected]
    assert summary["flagged_ood"] == sum(int(row["ood"]) for row in rows)
    # Floats in [0, 1] shaped (N, 1, H, W) give the same scores as the uint8 array.
    np.save(tmp_path / "f.npy", images[:, None].astype(np.float32) / 255)
    score_file(run_dir / "checkpoints" / "last.ckpt", tmp_path / "f.npy", tmp_path / "f.csv")
    assert [row["score"] for row in _read(tmp_path / "f.csv")] == [row["score"] for row in rows]


def test_new_images_get_the_neighbour_baselines_the_run_gave_its_own_images(
    run_dir: Path, tmp_path: Path
) -> None:
    """src.score on the run's own test images gives the pixel_knn/pixel_lof its OOD evaluation
    wrote (scores.csv), searching the same 40 of its 64 training images."""
    from src.pipeline.config import build
    from src.reporting.tables import read_scores_csv

    _, _, cfg = load_run(run_dir / "checkpoints" / "last.ckpt")
    test_images = build(cfg.data).images("test")
    np.save(tmp_path / "test.npy", test_images.numpy())
    score_file(run_dir / "checkpoints" / "last.ckpt", tmp_path / "test.npy", tmp_path / "out.csv")
    rows = _read(tmp_path / "out.csv")
    written = read_scores_csv(run_dir / "scores.csv")["test"]
    assert written["index"] == list(range(32))  # 32 test images, fewer than the cap: all of them
    for name in ("pixel_knn", "pixel_lof"):
        got = torch.tensor([float(row[name]) for row in rows], dtype=torch.float64)
        assert torch.allclose(got, torch.tensor(written[name], dtype=torch.float64), rtol=1e-5), name
    assert min(written["pixel_knn"]) > 0  # test images are not among the training images searched


def test_scores_a_folder_of_pngs_from_the_command_line(run_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pngs"
    folder.mkdir()
    for index, image in enumerate(_lines(3)):
        Image.fromarray(image, mode="L").save(folder / f"img{index}.png")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "src.score",
            f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
            f"input={folder}",
            f"output={tmp_path / 'out.csv'}",
            "threshold=0",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "scored 3 images with neg_elbo" in result.stdout and "3 of 3 called OOD" in result.stdout
    rows = _read(tmp_path / "out.csv")
    assert [row["id"] for row in rows] == ["img0.png", "img1.png", "img2.png"]
    assert all(row["ood"] == "1" for row in rows)  # negative ELBOs are positive: all above threshold 0


def test_refuses_bad_input_clearly(run_dir: Path, tmp_path: Path) -> None:
    shape = (1, 32, 32)
    np.save(tmp_path / "shape.npy", np.zeros((4, 28, 28), np.uint8))
    with pytest.raises(ScoreInputError, match=r"shape \(4, 1, 28, 28\).*\(N, 32, 32\)"):
        load_images(tmp_path / "shape.npy", shape)
    np.save(tmp_path / "range.npy", np.full((2, 32, 32), 2.0, np.float32))
    with pytest.raises(ScoreInputError, match=r"outside \[0, 1\]. Divide 0-255 data by 255"):
        load_images(tmp_path / "range.npy", shape)
    np.save(tmp_path / "ints.npy", np.zeros((2, 32, 32), np.int64))
    with pytest.raises(ScoreInputError, match="dtype int64; use uint8"):
        load_images(tmp_path / "ints.npy", shape)
    (tmp_path / "broken.npy").write_bytes(b"not an array")
    with pytest.raises(ScoreInputError, match="could not be read as a .npy array"):
        load_images(tmp_path / "broken.npy", shape)
    (tmp_path / "pngs").mkdir()
    (tmp_path / "pngs" / "bad.png").write_bytes(b"garbage")
    with pytest.raises(ScoreInputError, match=r"bad.png could not be read as a PNG"):
        load_images(tmp_path / "pngs", shape)
    with pytest.raises(ScoreInputError, match="does not exist"):
        load_images(tmp_path / "missing.npy", shape)
    with pytest.raises(ScoreInputError, match="missing.ckpt does not exist"):
        load_run(tmp_path / "missing.ckpt")


def test_command_line_reports_problems_with_exit_status_2(run_dir: Path, tmp_path: Path, capsys) -> None:
    assert command(["input=x.npy"]) == 2
    assert "missing ['ckpt_path', 'output']" in capsys.readouterr().err
    np.save(tmp_path / "shape.npy", np.zeros((4, 5), np.uint8))
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert (
        command([f"ckpt_path={ckpt}", f"input={tmp_path / 'shape.npy'}", f"output={tmp_path / 'o.csv'}"]) == 2
    )
    assert "Reshape or resize them" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_the_iw_bound_uses_the_runs_k(tmp_path: Path) -> None:
    """src.score computes neg_elbo_iw with the run's own ood.samples (so the run's threshold
    applies): the same values as the run's evaluation with that K."""
    folder = tmp_path / "run"
    overrides = ["model=vae", *FAST, "data.n_train=32", "data.n_val=16", "data.n_test=16", "ood.plots=false"]
    train(Run(compose_config([*overrides, "ood.score=neg_elbo_iw", "ood.samples=3"], folder), folder))
    images = _lines(4)
    np.save(tmp_path / "x.npy", images)
    score_file(folder / "checkpoints" / "last.ckpt", tmp_path / "x.npy", tmp_path / "out.csv")
    model, _, _ = load_run(folder / "checkpoints" / "last.ckpt")
    tensor = torch.from_numpy(images).float().div(255).unsqueeze(1)
    expected = scoring.score_images(model, tensor, samples=3)["neg_elbo_iw"]
    got = torch.tensor(
        [float(row["neg_elbo_iw"]) for row in _read(tmp_path / "out.csv")], dtype=torch.float64
    )
    assert torch.allclose(got, expected, rtol=1e-5)
    assert not torch.allclose(
        expected, scoring.score_images(model, tensor, samples=1)["neg_elbo_iw"], rtol=1e-5
    )


def test_the_runs_threshold_applies_only_to_the_checkpoint_it_was_measured_on(
    run_dir: Path, tmp_path: Path
) -> None:
    np.save(tmp_path / "lines.npy", _lines())
    best = run_dir / "checkpoints" / "best.ckpt"
    with pytest.raises(
        ScoreInputError, match=r"threshold was measured on checkpoints/last.ckpt, not on best.ckpt"
    ):
        score_file(best, tmp_path / "lines.npy", tmp_path / "out.csv")
    summary = score_file(best, tmp_path / "lines.npy", tmp_path / "out.csv", threshold=1.0)
    assert summary["threshold"] == 1.0 and summary["images"] == 6


def test_outputs_are_never_overwritten_unasked_nor_the_input(run_dir: Path, tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "lines.npy", _lines())
    ckpt, output = run_dir / "checkpoints" / "last.ckpt", tmp_path / "scores.csv"
    output.write_text("kept\n")
    base = [f"ckpt_path={ckpt}", f"input={tmp_path / 'lines.npy'}"]
    assert command([*base, f"output={output}"]) == 2
    assert "exists; give overwrite=true" in capsys.readouterr().err and output.read_text() == "kept\n"
    assert command([*base, f"output={output}", "overwrite=true"]) == 0
    assert output.read_text().startswith("id,score,ood,")
    for argument, message in [
        (f"output={tmp_path / 'lines.npy'}", "is the input"),
        (f"output={tmp_path}", "is a folder"),
    ]:
        assert command([*base, argument]) == 2
        assert message in capsys.readouterr().err
    for argument, message in [
        ("threshold=abc", "threshold='abc' is not a float"),
        ("batch_size=0", "at least 1"),
    ]:
        assert command([*base, f"output={tmp_path / 'new.csv'}", argument]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "new.csv").exists()


def test_colour_pngs_are_converted_with_a_notice_and_16_bit_ones_refused(
    run_dir: Path, tmp_path: Path, capsys
) -> None:
    colour, deep = tmp_path / "colour", tmp_path / "deep"
    colour.mkdir(), deep.mkdir()
    line = _lines(1)[0]
    Image.fromarray(np.stack([line] * 3, -1), mode="RGB").save(colour / "a.png")
    Image.fromarray(line.astype(np.uint16) * 257).save(deep / "a.png")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert command([f"ckpt_path={ckpt}", f"input={colour}", f"output={tmp_path / 'c.csv'}"]) == 0
    assert "is a RGB image; converted to 8-bit grayscale" in capsys.readouterr().err
    with pytest.raises(ScoreInputError, match=r"a.png is a I;16 image \(more than 8 bits a pixel\)"):
        load_images(deep, (1, 32, 32))

"""Scoring new images with a trained model (`python -m src.score`): one row per image (id, score,
decision at the run's threshold, then every score). The model, the decision score and the threshold
come from the run folder that holds the checkpoint (config.yaml, metrics.json); `score=<name>` and
`threshold=<number>` override them, `batch_size=<n>` sets the batch size."""

from __future__ import annotations

import csv
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image, UnidentifiedImageError

from src.errors import ConfigValueError, MissingFileError, UserError
from src.evaluation.scorer import OODSettings, Scorer
from src.files import atomic_path
from src.models.base import ReconstructionModel
from src.pipeline.checkpoints import CheckpointError, load_model, run_folder
from src.pipeline.config import build
from src.pipeline.run import read_run
from src.reporting.tables import read_scores_csv
from src.values import parse_bool

USAGE = (
    "usage: python -m src.score ckpt_path=<file.ckpt> input=<file.npy | folder of PNGs> output=<file.csv> "
    "[score=<name>] [threshold=<number>] [batch_size=<n>] [overwrite=true]"
)


class ScoreInputError(ConfigValueError):
    """Input images that cannot be scored: the message names the problem and the fix."""


def _as_images(array: np.ndarray, source: str, image_shape: tuple[int, ...]) -> torch.Tensor:
    """(N, H, W) or (N, 1, H, W), uint8 in [0, 255] or floats in [0, 1] -> float (N, 1, H, W) in [0, 1]."""
    height, width = image_shape[-2:]
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4 or array.shape[1] != 1 or array.shape[2:] != (height, width) or len(array) == 0:
        raise ScoreInputError(
            f"{source}: images of shape {array.shape}; the model takes (N, {height}, {width}) or "
            f"(N, 1, {height}, {width}) grayscale images with N >= 1. Reshape or resize them."
        )
    if array.dtype == np.uint8:
        return torch.from_numpy(array.astype(np.float32) / 255)
    if not np.issubdtype(array.dtype, np.floating):
        raise ScoreInputError(
            f"{source}: dtype {array.dtype}; use uint8 in [0, 255] or floats in [0, 1] (e.g. array / 255)."
        )
    if not np.isfinite(array).all():
        raise ScoreInputError(f"{source}: holds NaN or infinite values; images must be finite, in [0, 1].")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 1:
        raise ScoreInputError(
            f"{source}: float values in [{low:g}, {high:g}], outside [0, 1]. Divide 0-255 data by 255, "
            "or save it as uint8."
        )
    return torch.from_numpy(array.astype(np.float32))


def _grayscale(image: Image.Image, file: Path) -> Image.Image:
    """8-bit grayscale: colour is converted (with a notice); 16-bit or float images are refused,
    since squeezing them into 8 bits would clip them silently."""
    if image.mode in ("L", "1", "P"):
        return image.convert("L")
    if image.mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr"):
        print(f"src.score: {file} is a {image.mode} image; converted to 8-bit grayscale", file=sys.stderr)
        return image.convert("L")
    raise ScoreInputError(
        f"{file} is a {image.mode} image (more than 8 bits a pixel); save it as 8-bit grayscale."
    )


def png_files(path: Path) -> list[Path]:
    """The PNGs of a folder, sorted, or the one PNG `path`: regular files only (a FIFO or device
    named *.png would block the read for ever), the others skipped with a notice."""
    candidates = sorted(path.glob("*.png")) if path.is_dir() else [path]
    files = [file for file in candidates if file.is_file()]
    if skipped := [file.name for file in candidates if not file.is_file()]:
        if not path.is_dir():
            raise ScoreInputError(
                f"input={path} is not a regular file; give a .npy file, a .png or a folder."
            )
        print(f"src.score: skipped {skipped} in {path}: not regular files", file=sys.stderr)
    if not files:
        raise ScoreInputError(f"input={path} holds no .png files; put the images there as PNGs.")
    return files


def _read_png(file: Path, image_shape: tuple[int, ...]) -> np.ndarray:
    """A PNG as 8-bit grayscale, its size checked against the model's from the header, before
    anything is decoded (a small file can hold a huge image)."""
    height, width = image_shape[-2:]
    with Image.open(file) as image:
        if image.size != (width, height):
            raise ScoreInputError(
                f"{file} is {image.width}x{image.height} pixels; the model takes {width}x{height} images: "
                "resize it."
            )
        return np.asarray(_grayscale(image, file))


def load_images(path: Path, image_shape: tuple[int, ...]) -> tuple[list[str], torch.Tensor]:
    """Identifiers and images (N, 1, H, W) in [0, 1] from a .npy array (ids: row numbers), a PNG,
    or a folder of PNGs (ids: file names, sorted)."""
    if not path.exists():
        raise ScoreInputError(f"input={path} does not exist; give a .npy file, a .png or a folder of PNGs.")
    if path.is_dir() or path.suffix.lower() == ".png":
        files = png_files(path)
        arrays = []
        for file in files:
            try:
                arrays.append(_read_png(file, image_shape))
            except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as error:
                raise ScoreInputError(
                    f"{file} could not be read as a PNG ({error}); replace or remove it."
                ) from None
        return [file.name for file in files], _as_images(np.stack(arrays), str(path), image_shape)
    if path.suffix.lower() != ".npy":
        raise ScoreInputError(
            f"input={path}: unknown file type; give a .npy file, a .png or a folder of PNGs."
        )
    if not path.is_file():
        raise ScoreInputError(f"input={path} is not a regular file; give a .npy file, a .png or a folder.")
    try:
        # Mapped, not read: its shape is checked before a claimed huge array is read into memory.
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ScoreInputError(
            f"{path} could not be read as a .npy array ({error}); save it with numpy.save."
        ) from None
    return [str(index) for index in range(len(array))], _as_images(array, str(path), image_shape)


def validation_scores(run_dir: Path) -> dict[str, torch.Tensor]:
    """The run's per-image scores of its validation images (scores.csv), by score; empty if none."""
    path = run_dir / "scores.csv"
    if not path.is_file():
        return {}
    rows = read_scores_csv(path).get("val", {})
    return {
        name: torch.tensor(values, dtype=torch.float64)
        for name, values in rows.items()
        if name not in ("label", "index", "dose")
    }


def load_run(ckpt_path: Path) -> tuple[ReconstructionModel, dict[str, Any], DictConfig]:
    """The model of a checkpoint, the run's metrics and its config."""
    try:
        record = read_run(run_folder(ckpt_path))
        if record.metrics is None and (record.dir / "metrics.json").is_file():
            raise ScoreInputError(
                f"{record.error}: the run's score and threshold are read from it; restore it, or evaluate "
                f"the run again (python -m src.eval ckpt_path={ckpt_path})."
            )
        cfg = record.config()
        model, _ = load_model(ckpt_path, cfg)
    except CheckpointError as error:
        raise ScoreInputError(str(error)) from None
    return model, record.metrics or {}, cfg


def score_file(
    ckpt_path: Path,
    input_path: Path,
    output_path: Path,
    score: str | None = None,
    threshold: float | None = None,
    batch_size: int = 500,
) -> dict[str, Any]:
    """Score every image of `input_path`, write `output_path` (CSV) and return a summary."""
    model, metrics, cfg = load_run(ckpt_path)
    ids, images = load_images(input_path, tuple(model.image_shape))
    score = score or metrics.get("ood/score") or "recon_bce"
    if threshold is None and "ood/threshold" in metrics:
        measured_on = metrics.get("checkpoint")
        if (
            measured_on is not None
            and (ckpt_path.parent.parent / measured_on).resolve() != ckpt_path.resolve()
        ):
            raise ScoreInputError(
                f"the run's threshold was measured on {measured_on}, not on {ckpt_path.name}: score with "
                f"ckpt_path={ckpt_path.parent.parent / measured_on}, or give threshold=<number>."
            )
        threshold = metrics["ood/threshold"]
    # The run's own OOD settings (K for neg_elbo_iw, regret steps, background, neighbours, DoSE's
    # statistics), so that a new image gets the scores the run gave its own and its threshold applies.
    try:
        settings = replace(
            OODSettings.of(OmegaConf.to_container(cfg.get("ood") or {}, resolve=True)), batch_size=batch_size
        )
    except ConfigValueError as error:
        raise ScoreInputError(f"the run's ood settings: {error}") from None
    background = None
    if settings.background is not None:  # the run's background model, on the same images
        try:
            background, _ = load_model(Path(settings.background))
        except CheckpointError as error:
            raise ScoreInputError(f"the run's ood.background cannot be loaded: {error}") from None
    training = None
    if settings.neighbours.k > 0:  # the training images the run's OOD evaluation searched
        try:
            training = build(cfg.data).images("train")
        except MissingFileError as error:
            raise ScoreInputError(
                f"the run's pixel_knn/pixel_lof search its training images, which cannot be read: {error}"
            ) from None
    scorer = Scorer(model, settings, background, training)
    scores = scorer(images)
    validation = validation_scores(run_folder(ckpt_path))
    if validation:  # DoSE's densities come from the run's own validation scores
        try:
            scores["dose"] = scorer.dose(validation, {"new": scores})[1]["new"]
        except ConfigValueError as error:
            raise ScoreInputError(str(error)) from None
    if score not in scores:
        raise ScoreInputError(f"score={score!r} is not a score of this model; choose from {list(scores)}")
    decision = scores[score] > threshold if threshold is not None else None
    output_path.parent.mkdir(parents=True, exist_ok=True)
    names = list(scores)
    with atomic_path(output_path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "score", "ood", *names])
        for row, image_id in enumerate(ids):
            flag = "" if decision is None else int(decision[row])
            writer.writerow(
                [
                    image_id,
                    f"{float(scores[score][row]):.6g}",
                    flag,
                    *(f"{float(scores[n][row]):.6g}" for n in names),
                ]
            )
    return {
        "images": len(ids),
        "score": score,
        "threshold": threshold,
        "flagged_ood": None if decision is None else int(decision.sum()),
        "mean": float(scores[score].mean()),
        "min": float(scores[score].min()),
        "max": float(scores[score].max()),
        "output": str(output_path),
    }


def _number(key: str, value: Any, kind: type) -> Any:
    if value is None:
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ScoreInputError(f"{key}={value!r} is not a {kind.__name__}; give a number.") from None


def check_output(input_path: Path, output: Path, overwrite: bool) -> None:
    """Refuse an output that is the input, a folder, or an existing file (unless `overwrite`)."""
    if output.resolve() == input_path.resolve():
        raise ScoreInputError(f"output={output} is the input; give another file for the scores.")
    if output.is_dir():
        raise ScoreInputError(f"output={output} is a folder; give a file name, e.g. {output / 'scores.csv'}.")
    if output.exists() and not overwrite:
        raise ScoreInputError(
            f"output={output} exists; give overwrite=true to replace it, or another output."
        )


def command(argv: list[str]) -> int:
    """The command line: `key=value` arguments; 0 on success, 2 on bad input (one line why)."""
    args = OmegaConf.from_cli(argv)
    missing = [key for key in ("ckpt_path", "input", "output") if key not in args]
    known = {"ckpt_path", "input", "output", "score", "threshold", "batch_size", "overwrite"}
    unknown = sorted(set(args) - known)
    if missing or unknown:
        problem = f"missing {missing}" if missing else f"unknown arguments {unknown}"
        print(f"src.score: {problem}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        threshold = _number("threshold", args.get("threshold"), float)
        batch_size = _number("batch_size", args.get("batch_size", 500), int)
        if batch_size < 1:
            raise ScoreInputError(f"batch_size={batch_size}: give a whole number of at least 1.")
        output = Path(str(args.output))
        check_output(Path(str(args.input)), output, parse_bool("overwrite", args.get("overwrite", False)))
        summary = score_file(
            Path(str(args.ckpt_path)),
            Path(str(args.input)),
            output,
            args.get("score"),
            threshold,
            batch_size,
        )
    except UserError as error:
        print(f"src.score: {error}", file=sys.stderr)
        return 2
    flagged = summary["flagged_ood"]
    decided = (
        f"{flagged} of {summary['images']} called OOD (score > {summary['threshold']:.6g})"
        if flagged is not None
        else "no threshold in the run's metrics.json: no decisions (give threshold=<number>)"
    )
    print(
        f"scored {summary['images']} images with {summary['score']}: mean {summary['mean']:.4g}, "
        f"min {summary['min']:.4g}, max {summary['max']:.4g}; {decided}; wrote {summary['output']}"
    )
    return 0

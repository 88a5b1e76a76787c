"""Anomaly and out-of-distribution (OOD) detection after training: OOD sets per dataset, per-image
scores from the model, a threshold from held-out in-distribution validation scores (never OOD data),
torchmetrics metrics, scores.csv, ood.md (report 004's Table 2) and figures.

`evaluate(cfg.ood, model, datamodule, run_dir)` is the one entry point `src.run` calls."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_f1_score,
    binary_precision,
    binary_recall,
    binary_roc,
)

from src import plots
from src.data import TorchvisionDataModule, line_images, load_torchvision_images
from src.models import ReconstructionModel

THRESHOLD_METHODS = ("percentile", "fixed", "best_f1")
# Likelihood scores (nats per image) that get an input-complexity-corrected twin `<name>_ic`.
LIKELIHOOD_SCORES = ("neg_elbo", "neg_elbo_iw")
# The other dataset of each pair, for the `mnist` and `fashion_mnist` OOD sets.
TORCHVISION_SETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


# --- OOD sets ----------------------------------------------------------------------------------------
def _random_lines(count: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    angles = torch.rand(count, generator=generator, dtype=torch.float64) * 2 * math.pi
    return line_images(angles, size), angles


def _pixel_grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.arange(size, dtype=torch.float64)
    return coords[:, None].expand(size, size), coords[None, :].expand(size, size)


def _invert_where(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Images with the pixels under `mask` (N, S, S) set to the opposite colour."""
    mask = mask.unsqueeze(1)
    return torch.where(mask, 1 - images, images)


def lines_with_blob(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Line images with a disc of the opposite colour (radius size/10) at a random place: a defect."""
    images, _ = _random_lines(count, size, generator)
    rows, cols = _pixel_grid(size)
    radius = max(size / 10, 1.0)
    centres = radius + torch.rand(count, 2, generator=generator, dtype=torch.float64) * (
        size - 1 - 2 * radius
    )
    inside = (rows - centres[:, 0, None, None]).square() + (cols - centres[:, 1, None, None]).square()
    return _invert_where(images, inside <= radius**2)


def lines_with_scratch(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Line images with a one-pixel-wide segment (half the image long) of the opposite colour."""
    images, _ = _random_lines(count, size, generator)
    rows, cols = _pixel_grid(size)
    centres = size / 4 + torch.rand(count, 2, generator=generator, dtype=torch.float64) * (size / 2)
    theta = torch.rand(count, generator=generator, dtype=torch.float64) * math.pi
    dr, dc = torch.sin(theta)[:, None, None], torch.cos(theta)[:, None, None]
    rel_r, rel_c = rows - centres[:, 0, None, None], cols - centres[:, 1, None, None]
    along, across = rel_r * dr + rel_c * dc, rel_r * dc - rel_c * dr
    return _invert_where(images, (across.abs() <= 0.5) & (along.abs() <= size / 4))


def crossing_lines(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Not a line: the exclusive-or of two line images whose angles differ by 30 to 150 degrees
    (four quadrants, two white)."""
    first, angles = _random_lines(count, size, generator)
    gap = (torch.rand(count, generator=generator, dtype=torch.float64) * 2 / 3 + 1 / 6) * math.pi
    second = line_images(angles + gap, size)
    return (first != second).float()


def circles(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Not a line: a white disc (radius size/5 to size/3) on black, or its complement, near the centre."""
    rows, cols = _pixel_grid(size)
    radius = (torch.rand(count, generator=generator, dtype=torch.float64) * (1 / 3 - 1 / 5) + 1 / 5) * size
    centres = (size - 1) / 2 + (torch.rand(count, 2, generator=generator, dtype=torch.float64) - 0.5) * 4
    inside = (rows - centres[:, 0, None, None]).square() + (cols - centres[:, 1, None, None]).square()
    discs = (inside <= radius[:, None, None].square()).float().unsqueeze(1)
    flip = torch.rand(count, generator=generator) < 0.5
    discs[flip] = 1 - discs[flip]
    return discs


LINE_DEFECTS: dict[str, Callable[[int, int, torch.Generator], torch.Tensor]] = {
    "blob": lines_with_blob,
    "scratch": lines_with_scratch,
    "crossing": crossing_lines,
    "circle": circles,
}
SHIFTS = ("hflip", "vflip", "invert", "noise")


def shifted(
    images: torch.Tensor, shift: str, generator: torch.Generator, noise_amplitude: float
) -> torch.Tensor:
    """A synthetic shift of in-distribution images: a flip, the inversion 1 - x, or additive uniform
    noise in [-noise_amplitude, noise_amplitude] clipped to [0, 1]."""
    if shift == "hflip":
        return images.flip(-1)
    if shift == "vflip":
        return images.flip(-2)
    if shift == "invert":
        return 1 - images
    noise = (torch.rand(images.shape, generator=generator) * 2 - 1) * noise_amplitude
    return (images + noise).clamp(0, 1)


def ood_sets(
    names: list[str], datamodule: Any, count: int, seed: int = 0, noise_amplitude: float = 0.5
) -> dict[str, torch.Tensor]:
    """The OOD images (N, 1, H, W) in [0, 1] of each named set: `mnist`/`fashion_mnist` (that
    dataset's official test set, read from the datamodule's data root), a shift of the in-distribution
    test set (`hflip`, `vflip`, `invert`, `noise`), or a line defect (`blob`, `scratch`, `crossing`,
    `circle`, at the datamodule's image size). `count` caps each set."""
    known = [*TORCHVISION_SETS, *SHIFTS, *LINE_DEFECTS]
    test_images = datamodule.images("test")[:count]
    size = test_images.shape[-1]
    sets = {}
    for index, name in enumerate(names):
        # One generator per set, so adding or removing a set leaves the others unchanged.
        generator = torch.Generator().manual_seed(seed + index)
        if name in TORCHVISION_SETS:
            if name == datamodule.name:
                raise ValueError(f"ood.sets holds {name!r}, the training dataset itself; remove it")
            if not isinstance(datamodule, TorchvisionDataModule):
                raise ValueError(
                    f"OOD set {name!r} needs 28x28 images; remove it from ood.sets for {datamodule.name}"
                )
            images = load_torchvision_images(
                TORCHVISION_SETS[name], datamodule.root, train=False, download=datamodule.download
            ).tensors[0]
            if images.shape[-2:] != test_images.shape[-2:]:
                raise ValueError(
                    f"OOD set {name!r} has {tuple(images.shape[-2:])} images but the model takes "
                    f"{tuple(test_images.shape[-2:])}; remove it from ood.sets"
                )
            sets[name] = images[:count]
        elif name in SHIFTS:
            sets[name] = shifted(test_images, name, generator, noise_amplitude)
        elif name in LINE_DEFECTS:
            sets[name] = LINE_DEFECTS[name](len(test_images), size, generator)
        else:
            raise ValueError(f"ood.sets: unknown set {name!r}; choose from {known}")
    return sets


# --- scores --------------------------------------------------------------------------------------------
def png_bits(images: torch.Tensor) -> torch.Tensor:
    """Length in bits of each image (N, 1, H, W) in [0, 1] as an 8-bit grayscale PNG at the highest
    compression level: L(x), the input-complexity estimate of Serra et al. (ICLR 2020)."""
    pixels = (images[:, 0] * 255).round().to(torch.uint8).cpu().numpy()
    lengths = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image, mode="L").save(buffer, format="PNG", optimize=True, compress_level=9)
        lengths.append(8 * buffer.tell())
    return torch.tensor(lengths, dtype=torch.float64)


@torch.no_grad()
def score_images(
    model: ReconstructionModel, images: torch.Tensor, batch_size: int = 500, samples: int = 0
) -> dict[str, torch.Tensor]:
    """Every score of the model for each image (float64 tensors (N,), higher = more anomalous), in
    batches, plus `<score>_ic` = score in bits - PNG length in bits for each likelihood score
    (Serra et al. 2020's remedy for likelihoods that favour simple inputs) and `png_bits` itself.
    Sampled scores use a fixed seed, so the same images in the same batches get the same scores."""
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(0)
        for batch in images.split(batch_size):
            for name, value in model.ood_scores(batch.to(model.device), samples=samples).items():
                parts.setdefault(name, []).append(value.double().cpu())
    scores = {name: torch.cat(values) for name, values in parts.items()}
    complexity = png_bits(images)
    for name in LIKELIHOOD_SCORES:
        if name in scores:
            scores[f"{name}_ic"] = scores[name] / math.log(2) - complexity
    # Not a model score: the input's complexity alone, a baseline that shows how much of a
    # separation (or of the _ic correction) needs no model at all.
    scores["png_bits"] = complexity
    return scores


# --- thresholds and metrics ----------------------------------------------------------------------
def _unit_interval(scores: torch.Tensor) -> torch.Tensor:
    """Scores mapped monotonically into [0, 1] in float64: torchmetrics applies a sigmoid to
    predictions outside [0, 1], which would squash large scores (e.g. 300 nats) into ties."""
    scores = scores.double()
    low, high = scores.min(), scores.max()
    return (scores - low) / (high - low) if high > low else torch.zeros_like(scores)


def _labelled(in_scores: torch.Tensor, ood_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.cat([in_scores.double(), ood_scores.double()])
    labels = torch.cat([torch.zeros(len(in_scores)), torch.ones(len(ood_scores))]).long()
    return scores, labels


def percentile_threshold(validation_scores: torch.Tensor, percentile: float) -> float:
    """The `percentile`-th percentile (linear interpolation) of in-distribution validation scores."""
    if not 0 <= percentile <= 100:
        raise ValueError(f"ood.threshold.percentile must be in [0, 100], got {percentile}")
    return float(torch.quantile(validation_scores.double(), percentile / 100))


def best_f1_threshold(in_scores: torch.Tensor, ood_scores: torch.Tensor) -> float:
    """The threshold that maximises the OOD class's F1 on these labelled scores. It uses the OOD
    labels, so what it gives is an upper bound on a real detector, never a detector."""
    scores, labels = _labelled(in_scores, ood_scores)
    ordered, order = scores.sort(descending=True)
    hits = labels[order].double()
    true_pos, false_pos = hits.cumsum(0), (1 - hits).cumsum(0)
    f1 = 2 * true_pos / (true_pos + false_pos + hits.sum())  # 2TP / (2TP + FP + FN)
    # Flagging the first i + 1 scores is a threshold only where the next score is lower (ties go together).
    f1[:-1][ordered[1:] == ordered[:-1]] = -1
    best = int(f1.argmax())
    # score > ordered[best + 1] flags exactly the first best + 1 scores.
    return float(ordered[best + 1]) if best + 1 < len(ordered) else float(ordered[-1] - 1)


def fpr_at_tpr(in_scores: torch.Tensor, ood_scores: torch.Tensor, tpr: float = 0.95) -> float:
    """False positive rate (in-distribution flagged as OOD) at the first ROC point whose true
    positive rate (OOD flagged) reaches `tpr`."""
    scores, labels = _labelled(in_scores, ood_scores)
    fprs, tprs, _ = binary_roc(_unit_interval(scores), labels)
    return float(fprs[tprs >= tpr - 1e-12].min())


def auroc(in_scores: torch.Tensor, ood_scores: torch.Tensor) -> float:
    """Area under the ROC curve with OOD as the positive class (0.5: no separation, 1: perfect)."""
    scores, labels = _labelled(in_scores, ood_scores)
    return float(binary_auroc(_unit_interval(scores), labels))


def detection_metrics(
    in_scores: torch.Tensor, ood_scores: torch.Tensor, threshold: float
) -> dict[str, float]:
    """AUROC, AUPR and FPR95 with OOD as the positive class, and precision, recall and F1 of both
    classes when images scoring above `threshold` are called OOD."""
    scores, labels = _labelled(in_scores, ood_scores)
    flagged = (scores > threshold).long()
    unit = _unit_interval(scores)
    return {
        "auroc": auroc(in_scores, ood_scores),
        "aupr": float(binary_average_precision(unit, labels)),
        "fpr95": fpr_at_tpr(in_scores, ood_scores),
        "precision_in": float(binary_precision(1 - flagged, 1 - labels)),
        "recall_in": float(binary_recall(1 - flagged, 1 - labels)),
        "f1_in": float(binary_f1_score(1 - flagged, 1 - labels)),
        "precision_ood": float(binary_precision(flagged, labels)),
        "recall_ood": float(binary_recall(flagged, labels)),
        "f1_ood": float(binary_f1_score(flagged, labels)),
    }


def choose_threshold(
    method: str,
    validation_scores: torch.Tensor,
    percentile: float = 99.0,
    value: float | None = None,
) -> float | None:
    """The decision threshold from in-distribution validation scores: `percentile` (default) or a
    `fixed` value. `best_f1` is chosen per OOD set later, from labels (None here)."""
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"ood.threshold.method must be one of {list(THRESHOLD_METHODS)}, got {method!r}")
    if method == "percentile":
        return percentile_threshold(validation_scores, percentile)
    if method == "fixed":
        if value is None:
            raise ValueError("ood.threshold.method=fixed needs a value: set ood.threshold.value=<number>")
        return float(value)
    return None


# --- outputs -------------------------------------------------------------------------------------------
def write_scores_csv(
    path: Path, scored: Mapping[str, Mapping[str, torch.Tensor]], labels: Mapping[str, int]
) -> Path:
    """One row per image: set, label (0 in-distribution, 1 OOD), index in its set, every score."""
    names = list(dict.fromkeys(name for scores in scored.values() for name in scores))
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["set", "label", "index", *names])
        for set_name, scores in scored.items():
            columns = [scores[name].tolist() for name in names]
            for index, row in enumerate(zip(*columns, strict=True)):
                writer.writerow([set_name, labels[set_name], index, *(f"{value:.6g}" for value in row)])
    return path


def table2(
    data_name: str,
    results: Mapping[str, Mapping[str, float]],
    sizes: Mapping[str, int],
    aurocs: Mapping[str, Mapping[str, float]],
    header: str,
) -> str:
    """ood.md: per OOD set report 004's Table 2 (label 0 in-distribution, 1 OOD), then the AUROC of
    every score on every set."""
    lines = ["# OOD detection", "", header, ""]
    for name, metrics in results.items():
        lines += [
            f"## {data_name} test (label 0) vs {name} (label 1)",
            "",
            f"AUROC {metrics['auroc']:.4f} · AUPR {metrics['aupr']:.4f} · "
            f"FPR at 95% TPR {metrics['fpr95']:.4f}",
            "",
            "| label | precision | recall | f1-score | support |",
            "|---|---|---|---|---|",
            f"| 0 | {metrics['precision_in']:.4f} | {metrics['recall_in']:.4f} | {metrics['f1_in']:.4f} "
            f"| {sizes['test']} |",
            f"| 1 | {metrics['precision_ood']:.4f} | {metrics['recall_ood']:.4f} | {metrics['f1_ood']:.4f} "
            f"| {sizes[name]} |",
            "",
        ]
    score_names = list(next(iter(aurocs.values())))
    lines += ["## AUROC of every score", "", "| set | " + " | ".join(score_names) + " |"]
    lines.append("|---" * (len(score_names) + 1) + "|")
    for name, by_score in aurocs.items():
        lines.append(f"| {name} | " + " | ".join(f"{by_score[score]:.4f}" for score in score_names) + " |")
    return "\n".join(lines) + "\n"


@torch.no_grad()
def latent_codes(model: ReconstructionModel, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model.code(batch.to(model.device)).cpu() for batch in images.split(batch_size)])


# --- the evaluation ------------------------------------------------------------------------------------
def evaluate(
    cfg: Mapping[str, Any], model: ReconstructionModel, datamodule: Any, run_dir: Path
) -> dict[str, Any]:
    """Score validation, test and OOD images, threshold, measure, and write scores.csv, ood.md and
    the figures into run_dir. Returns the `ood/...` metrics for metrics.json."""
    count = cfg.get("max_images") or None
    in_sets = {"val": datamodule.images("val")[:count], "test": datamodule.images("test")[:count]}
    out_sets = ood_sets(
        list(cfg["sets"]), datamodule, count, cfg.get("seed", 0), cfg.get("noise_amplitude", 0.5)
    )
    labels = {"val": 0, "test": 0, **dict.fromkeys(out_sets, 1)}
    scored = {
        name: score_images(model, images, cfg.get("batch_size", 500), cfg.get("samples", 0))
        for name, images in {**in_sets, **out_sets}.items()
    }
    score = cfg["score"]
    if score not in scored["test"]:
        raise ValueError(
            f"ood.score={score!r} is not a score of this model; choose from {list(scored['test'])}"
            + (" (neg_elbo_iw needs ood.samples > 0)" if "_iw" in score else "")
        )
    threshold_cfg = cfg["threshold"]
    method = threshold_cfg["method"]
    threshold = choose_threshold(
        method, scored["val"][score], threshold_cfg.get("percentile", 99.0), threshold_cfg.get("value")
    )
    metrics: dict[str, Any] = {"ood/score": score, "ood/threshold_method": method}
    if threshold is not None:
        metrics["ood/threshold"] = threshold
    results, aurocs, thresholds = {}, {}, {}
    in_test = scored["test"]
    for name in out_sets:
        out = scored[name]
        # Labels choose best_f1 thresholds: an upper bound, never used as the run's threshold.
        thresholds[name] = (
            threshold if threshold is not None else best_f1_threshold(in_test[score], out[score])
        )
        results[name] = detection_metrics(in_test[score], out[score], thresholds[name])
        aurocs[name] = {key: auroc(in_test[key], out[key]) for key in in_test}
        upper = detection_metrics(in_test[score], out[score], best_f1_threshold(in_test[score], out[score]))
        for key, value in results[name].items():
            metrics[f"ood/{name}/{key}"] = value
        metrics[f"ood/{name}/f1_ood_best_f1_upper_bound"] = upper["f1_ood"]
        if method == "best_f1":
            metrics[f"ood/{name}/threshold_best_f1_upper_bound"] = thresholds[name]
        for key, value in aurocs[name].items():
            metrics[f"ood/{name}/auroc_{key}"] = value

    if method == "percentile":
        how = (
            f"the {threshold_cfg.get('percentile', 99.0):g}th percentile of in-distribution validation scores"
        )
    elif method == "fixed":
        how = "fixed (ood.threshold.value)"
    else:
        how = "best_f1 per set, chosen WITH the OOD labels: an upper bound, not a detector"
    shown = f"{threshold:.6g}" if threshold is not None else "per set"
    header = (
        f"Score `{score}` (higher = more anomalous); an image is called OOD when its score > {shown}: {how}."
    )
    sizes = {name: len(values[score]) for name, values in scored.items()}
    (run_dir / "ood.md").write_text(table2(datamodule.name, results, sizes, aurocs, header))
    write_scores_csv(run_dir / "scores.csv", scored, labels)

    if cfg.get("plots", True):
        plots.roc_curves(
            {name: _labelled(in_test[score], scored[name][score]) for name in out_sets},
            run_dir / "ood_roc.png",
            score,
        )
        plots.score_histograms(
            {"val": scored["val"][score], "test": in_test[score]},
            {name: scored[name][score] for name in out_sets},
            thresholds,
            run_dir / "ood_histograms.png",
            score,
        )
        limit = cfg.get("plot_points", 2000)
        codes = {
            name: latent_codes(model, images[:limit]) for name, images in {**in_sets, **out_sets}.items()
        }
        predicted = {
            name: (
                (in_test[score][:limit] > thresholds[name]).numpy(),
                (scored[name][score][:limit] > thresholds[name]).numpy(),
            )
            for name in out_sets
        }
        plots.latent_ood(codes, predicted, run_dir / "ood_latent.png")
    return metrics

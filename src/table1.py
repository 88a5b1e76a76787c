"""Report 004's Table 1 from the run folders of `python -m src.run -m experiment=table1_mnist`:

    python -m src.table1 outputs/multiruns/<folder> [more folders] [--samples 1000]

writes table1.md (mean ± std over seeds per model) and table1_samples.png (prior samples of each
model side by side, first seed) into the first folder. Beside report 004's loss and cosine
similarity it measures the prior samples: `sharpness`, the mean gradient magnitude of the images,
`gray`, the fraction of grey pixels (strictly between 0.1 and 0.9: blur and noise both raise it,
while noise also raises the gradient), `nn_cosine`, the cosine to the nearest MNIST test image,
and `digit_confidence`, the mean max-softmax probability of a small MNIST classifier trained here
(how digit-like a sample is; real test digits are the scale)."""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from torch import nn
from torchvision.utils import make_grid

from src import plots
from src.models import VariationalAutoencoder, gray_fraction

NAMES = {"VariationalAutoencoder": "VAE", "VAEGAN": "VAE-GAN"}
# (metrics.json key or sample measure, column title, scale): cosine in percent as in report 004.
COLUMNS = (
    ("test/loss", "loss (own objective)", 1.0),
    ("test/cosine_similarity", "cosine similarity %", 100.0),
    ("test/recon_mse", "recon mse", 1.0),
    ("test/neg_elbo", "-ELBO (nats)", 1.0),
    ("sharpness", "sample sharpness", 1.0),
    ("gray", "sample grey pixels %", 100.0),
    ("nn_cosine", "sample NN cosine %", 100.0),
    ("digit_confidence", "sample digit confidence %", 100.0),
)


def sharpness(images: torch.Tensor) -> torch.Tensor:
    """Per-image mean gradient magnitude sqrt(dx^2 + dy^2) of (N, 1, H, W) images, with forward
    differences (the last row and column dropped): blurry images score low, crisp strokes high."""
    dx = images[..., :-1, 1:] - images[..., :-1, :-1]
    dy = images[..., 1:, :-1] - images[..., :-1, :-1]
    return (dx.square() + dy.square()).sqrt().flatten(1).mean(1)


def train_digit_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int = 3) -> nn.Module:
    """A small MLP (784-256-10) trained on MNIST's training images, to judge whether samples are
    digits: its confidence (mean max-softmax) on real test digits is the scale to compare with."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(images[0].numel(), 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3)
    for _ in range(epochs):
        for index in torch.randperm(len(images), generator=generator).split(256):
            optimizer.zero_grad()
            F.cross_entropy(classifier(images[index]), labels[index]).backward()
            optimizer.step()
    return classifier.eval()


@torch.no_grad()
def digit_confidence(classifier: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Per-image max-softmax probability of the digit classifier: near 1 for a clear digit."""
    return classifier(images).softmax(1).amax(1)


def nearest_cosine(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Per-image cosine similarity to the closest reference image."""
    return (F.normalize(images.flatten(1), dim=1) @ F.normalize(references.flatten(1), dim=1).T).amax(1)


@torch.no_grad()
def sample_measures(
    images: torch.Tensor, references: torch.Tensor, classifier: nn.Module
) -> dict[str, float]:
    """Means over `images` of sharpness, grey pixels, nearest-reference cosine and digit confidence."""
    return {
        "sharpness": sharpness(images).mean().item(),
        "gray": gray_fraction(images).mean().item(),
        "nn_cosine": nearest_cosine(images, references).mean().item(),
        "digit_confidence": digit_confidence(classifier, images).mean().item(),
    }


@torch.no_grad()
def measure_run(
    run_dir: Path, count: int, references: torch.Tensor, classifier: nn.Module
) -> tuple[dict, torch.Tensor]:
    """A run's metrics plus its samples' measures, and the samples (decoded z ~ N(0, I), seed 0)."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    model_class = get_class(cfg.model._target_)
    # A training run's own last checkpoint, or the one a src.eval folder evaluated.
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    model: VariationalAutoencoder = model_class.load_from_checkpoint(
        checkpoint if checkpoint.is_file() else cfg.ckpt_path, map_location="cpu"
    )
    model.eval()
    samples = model.sample(count, generator=torch.Generator().manual_seed(0))
    row = {
        "model": NAMES.get(model_class.__name__, model_class.__name__),
        "seed": cfg.seed,
        **json.loads((run_dir / "metrics.json").read_text()),
        **sample_measures(samples, references, classifier),
    }
    return row, samples


def markdown(rows: Sequence[dict]) -> str:
    """One line per model: mean ± standard deviation over its runs (seeds) of every column."""
    lines = [
        "| model | runs | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 2) + "|",
    ]
    for model in dict.fromkeys(row["model"] for row in rows):
        runs = [row for row in rows if row["model"] == model]
        cells = []
        for key, _, scale in COLUMNS:
            values = [scale * row[key] for row in runs if row.get(key) is not None]
            spread = f" ± {statistics.stdev(values):.3g}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.4g}{spread}" if values else "–")
        lines.append(f"| {model} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def side_by_side(samples: dict[str, torch.Tensor], path: Path) -> Path:
    """The first 64 samples of each model as an 8x8 mosaic, one panel per model."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(samples), figsize=(4 * len(samples), 4.4), squeeze=False)
    for ax, (model, images) in zip(axes[0], samples.items(), strict=True):
        ax.imshow(make_grid(images[:64], nrow=8, pad_value=1.0)[0].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{model}: z ~ N(0, I)")
        ax.axis("off")
    return plots._save(fig, path)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+", help="multirun folders of experiment=table1_mnist")
    parser.add_argument("--samples", type=int, default=1000, help="prior samples per run")
    args = parser.parse_args(argv)
    run_dirs = [path.parent for folder in args.folders for path in sorted(folder.glob("*/metrics.json"))]
    if not run_dirs:
        raise SystemExit(f"No finished runs (*/metrics.json) in {[str(f) for f in args.folders]}")
    datamodule = instantiate(OmegaConf.load(run_dirs[0] / "config.yaml").data)
    references = datamodule.images("test")
    classifier = train_digit_classifier(datamodule.images("train"), datamodule.labels("train"))
    rows, samples = [], {}
    for run_dir in run_dirs:
        row, images = measure_run(run_dir, args.samples, references, classifier)
        rows.append(row)
        samples.setdefault(row["model"], images)
    # Real digits for scale: 1000 test images against the other 9000.
    held_out, others = references[: args.samples], references[args.samples :]
    reference_row = {"model": "MNIST test images", **sample_measures(held_out, others, classifier)}
    table = markdown([*rows, reference_row])
    (args.folders[0] / "table1.md").write_text(table)
    side_by_side(samples, args.folders[0] / "table1_samples.png")
    print(table)
    return table


if __name__ == "__main__":
    main()

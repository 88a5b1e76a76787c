"""Figures written into each run folder (PNG). Plain matplotlib, Agg backend (no screen needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def image_rows(rows: Sequence[torch.Tensor], row_titles: Sequence[str], path: Path) -> Path:
    """One row of images per tensor (N, 1, H, W), values in [0, 1], e.g. inputs over reconstructions."""
    columns = max(len(row) for row in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.2 * columns + 1, 1.3 * len(rows)), squeeze=False)
    for axes_row, images, title in zip(axes, rows, row_titles, strict=True):
        for index, ax in enumerate(axes_row):
            ax.set_xticks([])
            ax.set_yticks([])
            if index < len(images):
                ax.imshow(images[index, 0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.axis("off")
        axes_row[0].set_ylabel(title, rotation=0, ha="right", va="center")
    return _save(fig, path)


def image_grid(images: torch.Tensor, path: Path, title: str, columns: int = 8) -> Path:
    """A grid of images (N, 1, H, W) in [0, 1], e.g. samples from the prior."""
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns, rows + 0.4), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index < len(images):
            ax.imshow(images[index, 0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
    fig.suptitle(title)
    return _save(fig, path)


def bottleneck_distribution(codes: torch.Tensor, path: Path, sigmas: torch.Tensor | None = None) -> Path:
    """Report 000's Fig. 10: a histogram (1-D) or scatter (2-D) of bottleneck values over a set,
    and for the VAE the histogram of the posterior standard deviations beside it."""
    panels = 2 if sigmas is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), squeeze=False)
    ax = axes[0, 0]
    codes = codes.detach().cpu()
    if codes.shape[1] == 1:
        ax.hist(codes[:, 0].numpy(), bins=50)
        ax.set_xlabel("bottleneck value")
        ax.set_ylabel("images")
    else:
        ax.scatter(codes[:, 0].numpy(), codes[:, 1].numpy(), s=4, alpha=0.5)
        ax.set_xlabel("z[0]")
        ax.set_ylabel("z[1]")
    ax.set_title("bottleneck values (test set)")
    if sigmas is not None:
        ax = axes[0, 1]
        ax.hist(sigmas.detach().cpu().flatten().numpy(), bins=50)
        ax.set_xlabel("posterior standard deviation sigma")
        ax.set_title("sigma (test set)")
    return _save(fig, path)


def loss_curves(history: Sequence[dict[str, float]], path: Path) -> Path:
    """Epoch-level train/loss and val/loss against the epoch."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("train/loss", "val/loss"):
        points = [(row["epoch"], row[key]) for row in history if row.get(key) is not None]
        if points:
            epochs, values = zip(*points, strict=True)
            ax.plot(epochs, values, label=key, marker="." if len(points) < 50 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    return _save(fig, path)

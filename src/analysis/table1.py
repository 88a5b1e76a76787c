"""Report 004's Table 1 from the run folders of `python -m src.run -m experiment=table1_mnist`:
mean ± std over seeds per model of the test metrics and of the prior samples' measures
(src/evaluation/sample_quality.py), with MNIST test images as the scale."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from src.errors import MissingFileError
from src.evaluation.sample_quality import sample_measures, train_digit_classifier
from src.files import write_text_atomic
from src.pipeline.checkpoints import load_model
from src.pipeline.config import build
from src.pipeline.run import read_run
from src.reporting.figures import samples_side_by_side
from src.reporting.tables import markdown_table

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


@torch.no_grad()
def measure_run(
    run_dir: Path, count: int, references: torch.Tensor, classifier: nn.Module
) -> tuple[dict, torch.Tensor]:
    """A run's metrics plus its samples' measures, and the samples (decoded z ~ N(0, I), seed 0)."""
    record = read_run(run_dir)
    cfg = record.config()
    # A training run's own last checkpoint, or the one a src.eval folder evaluated.
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    model, _ = load_model(checkpoint if checkpoint.is_file() else Path(cfg.ckpt_path), cfg)
    samples = model.sample(count, generator=torch.Generator().manual_seed(0))
    row = {
        "model": NAMES.get(type(model).__name__, type(model).__name__),
        "seed": cfg.seed,
        **(record.metrics or {}),
        **sample_measures(samples, references, classifier),
    }
    return row, samples


def markdown(rows: Sequence[dict]) -> str:
    """One line per model: mean ± standard deviation over its runs (seeds) of every column."""
    table_rows = []
    for model in dict.fromkeys(row["model"] for row in rows):
        runs = [row for row in rows if row["model"] == model]
        cells = []
        for key, _, scale in COLUMNS:
            values = [scale * row[key] for row in runs if row.get(key) is not None]
            spread = f" ± {statistics.stdev(values):.3g}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.4g}{spread}" if values else "–")
        table_rows.append([model, len(runs), *cells])
    columns = ["model", "runs", *(title for _, title, _ in COLUMNS)]
    return "\n".join(markdown_table(columns, table_rows)) + "\n"


def write_table1(folders: Sequence[Path], count: int = 1000) -> str:
    """table1.md and table1_samples.png from the finished runs in `folders`, written into the
    first one; returns the table."""
    run_dirs = [path.parent for folder in folders for path in sorted(folder.glob("*/metrics.json"))]
    if not run_dirs:
        raise MissingFileError(
            f"no finished runs (*/metrics.json) in {[str(f) for f in folders]}: give the sweep folders of "
            "python -m src.run -m experiment=table1_mnist."
        )
    datamodule = build(read_run(run_dirs[0]).config().data)
    references = datamodule.images("test")
    classifier = train_digit_classifier(datamodule.images("train"), datamodule.labels("train"))
    rows, samples = [], {}
    for run_dir in run_dirs:
        row, images = measure_run(run_dir, count, references, classifier)
        rows.append(row)
        samples.setdefault(row["model"], images)
    # Real digits for scale: 1000 test images against the other 9000.
    held_out, others = references[:count], references[count:]
    reference_row = {"model": "MNIST test images", **sample_measures(held_out, others, classifier)}
    table = markdown([*rows, reference_row])
    write_text_atomic(folders[0] / "table1.md", table)
    samples_side_by_side(samples, folders[0] / "table1_samples.png")
    return table

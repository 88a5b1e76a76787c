"""TensorBoard: a run's results and figures beside the curves Lightning logs, so that
`tensorboard --logdir <run>/tensorboard` shows what metrics.json and the PNGs hold."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger


def log_results(
    loggers: Sequence[Any], metrics: Mapping[str, Any], figures: Sequence[Path], logged: Collection[str]
) -> None:
    """Every metrics.json value not `logged` by Lightning already (numbers as scalars, the rest as
    text) and each figure (an image under figures/<name>) at the run's last step, to each
    TensorBoard logger."""
    step = int(metrics.get("steps") or 0)
    for logger in loggers:
        if not isinstance(logger, TensorBoardLogger):
            continue
        writer = logger.experiment
        for key, value in metrics.items():
            if key in logged:
                continue
            if isinstance(value, int | float) and not isinstance(value, bool):
                writer.add_scalar(key, value, step)
            else:
                writer.add_text(key, str(value), step)
        for path in figures:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            writer.add_image(f"figures/{path.stem}", pixels, step, dataformats="HWC")
        writer.close()  # Lightning closed it after the test stage; this reopened it

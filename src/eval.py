"""`python -m src.eval ckpt_path=<run>/checkpoints/<name>.ckpt`: re-run the test evaluation of a
saved model into a new run folder (metrics.json with the test/* keys, figures); conf/eval.yaml."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from src.pipeline.config import register_resolvers


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    from src.pipeline.evaluation_run import evaluate_checkpoint
    from src.pipeline.run import run_job

    hydra_cfg = HydraConfig.get()
    return run_job(
        evaluate_checkpoint, cfg, Path(hydra_cfg.runtime.output_dir), hydra_cfg.mode == RunMode.MULTIRUN
    )


if __name__ == "__main__":
    register_resolvers()
    main()

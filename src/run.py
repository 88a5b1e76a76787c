"""`python -m src.run [group=option ...] [key=value ...]`: train, validate and test one model (or,
with -m, a sweep of them) and leave a self-contained run folder (docs/run-folder.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from src.pipeline.config import misspelt_keys, register_resolvers
from src.pipeline.process import interrupt_on_signals


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    # Imported here, not above: `--help` and config errors answer without loading torch.
    from src.pipeline.run import run_job
    from src.pipeline.training import train

    hydra_cfg = HydraConfig.get()
    return run_job(train, cfg, Path(hydra_cfg.runtime.output_dir), hydra_cfg.mode == RunMode.MULTIRUN)


if __name__ == "__main__":
    register_resolvers()
    try:
        # SIGTERM and SIGINT stop the process with their status (`Interrupted`) wherever they land: a
        # job reports them in its error.txt, a sweep in its summary, also between two of its jobs.
        with interrupt_on_signals():
            main()
    except SystemExit as stop:
        # Hydra refused the command line (exit 1): a misspelt key gets the nearest ones and status 2.
        if stop.code == 1 and (lines := misspelt_keys(sys.argv[1:])):
            print(*lines, sep="\n", file=sys.stderr)
            sys.exit(2)
        raise

"""A Hydra callback for the launcher tests: each job writes its process id and its start and end
times (wall clock) into probe.json in its own folder, so a test can tell whether jobs overlapped."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class JobProbe(Callback):
    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._started = time.time()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        record = {"pid": os.getpid(), "start": self._started, "end": time.time()}
        (Path(HydraConfig.get().runtime.output_dir) / "probe.json").write_text(json.dumps(record))

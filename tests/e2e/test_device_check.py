"""The device check (benchmarks/device.sh, `make device-check` on a lent GPU) run on the CPU with
tiny sizes, so that the script a GPU session runs once cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import PROJECT_ROOT, SHARED_DATASETS, needs_shared_mnist

pytestmark = pytest.mark.slow


@needs_shared_mnist
def test_the_device_check_runs_every_job_on_the_cpu(tmp_path: Path) -> None:
    output = tmp_path / "device.json"
    process = subprocess.run(
        ["bash", "benchmarks/device.sh", "--accelerator", "cpu", "--tiny", "--output", str(output)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PYTHON": sys.executable,
            "DATA_ROOT": str(SHARED_DATASETS),
            "OMP_NUM_THREADS": "1",
        },
        timeout=900,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    results = json.loads(output.read_text())
    assert results["accelerator"] == "cpu" and results["tiny"] and results["device"].startswith("cpu")
    assert set(results["jobs"]) == {
        "single/32-true",
        "census/32-true",
        "ood_dense/32-true",
        "ood_conv/32-true",
    }
    for name, figures in results["jobs"].items():
        assert figures["seconds"] > 0 and figures["seeds_per_s"] > 0, name
        if not name.startswith("single"):  # batched: the chunks' phases, from their timing.json
            assert 0 < figures["train_s"] < figures["seconds"], name
            assert figures["finish_ms_per_member"] > 0, name

"""Benchmarks (not tests): `make bench` or `python -m src.bench [census ...] [--repeats N]`.

Prints a table and writes bench/results.json. Every figure is the median of `--repeats` runs; the
machine is noisy, so compare ratios measured in the same run, on an otherwise idle machine.

census: seeds per second of report 000's 2x2 CA census (5000 full-batch steps per seed), end to end
as a user runs it (`python -m src.run -m experiment=census_ca_2x2 seed=...`, process start, job
folders and the sweep summary included), through the batched launcher (`--census-seeds` seeds) and
one job at a time (`--per-run-seeds` seeds)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _timed_sweep(seeds: int, *overrides: str) -> float:
    """Wall-clock seconds of one census sweep over `seeds` seeds, started as a user would."""
    with tempfile.TemporaryDirectory() as output_root:
        command = [
            sys.executable,
            "-m",
            "src.run",
            "-m",
            "experiment=census_ca_2x2",
            f"seed=range(0,{seeds})",
            f"output_root={output_root}",
            *overrides,
        ]
        started = time.perf_counter()
        subprocess.run(
            command,
            cwd=PROJECT_ROOT,
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        )
        return time.perf_counter() - started


def bench_census(args: argparse.Namespace) -> dict[str, Any]:
    batched = [_timed_sweep(args.census_seeds, "hydra/launcher=batched") for _ in range(args.repeats)]
    per_run = [_timed_sweep(args.per_run_seeds) for _ in range(args.repeats)]
    batched_rate = args.census_seeds / statistics.median(batched)
    per_run_rate = args.per_run_seeds / statistics.median(per_run)
    return {
        "batched_seeds_per_s": batched_rate,
        "per_run_seeds_per_s": per_run_rate,
        "batched_over_per_run": batched_rate / per_run_rate,
        "batched_seconds": batched,
        "per_run_seconds": per_run,
        "batched_seeds": args.census_seeds,
        "per_run_seeds": args.per_run_seeds,
    }


BENCHMARKS = {"census": bench_census}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", default=list(BENCHMARKS), choices=list(BENCHMARKS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--census-seeds", type=int, default=1000)
    parser.add_argument("--per-run-seeds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=PROJECT_ROOT / "bench" / "results.json")
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    results: dict[str, Any] = {"device": device, "platform": platform.platform(), "repeats": args.repeats}
    table = Table(title=f"benchmarks on {device}, medians of {args.repeats}")
    table.add_column("benchmark")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name in args.names:
        results[name] = BENCHMARKS[name](args)
        for key, value in results[name].items():
            if isinstance(value, float):
                table.add_row(name, key, f"{value:.3f}")
    Console().print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print(f"written: {args.output}")


if __name__ == "__main__":
    main()

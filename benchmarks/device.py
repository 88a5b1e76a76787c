"""The device check (`make device-check`, benchmarks/device.sh): the project's central jobs on one
accelerator, timed as a user runs them, into one JSON file.

    python -m benchmarks.device [--accelerator cuda|cpu] [--tiny] [--output bench/device.json]

Jobs, each `python -m src.run` in its own process (process start, training, every job folder and the
sweep summary included):
- single: one dense MNIST VAE run (ood_mnist_vae with the dense net);
- census: report 000's 2x2 CA census, batched (1000 seeds);
- ood_dense: the MNIST VAE OOD sweep with the dense net, batched (16 seeds);
- ood_conv: the same with report 004's conv net, batched (4 seeds).
On a GPU the MNIST jobs run in fp32 and in bf16-mixed; on the CPU in fp32 only. `--tiny` shrinks
every job to a few steps and seeds, so that the test suite runs the same script on the CPU and it
cannot rot. Each job's figures: its wall-clock seconds, seeds per second and, for batched sweeps,
the chunks' training and finishing seconds (timing.json)."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from benchmarks.run import PROJECT_ROOT, timed_sweep

QUIET = ["logger=none", "figures=false", "print_config=false", "trainer.enable_progress_bar=false"]


def jobs(tiny: bool) -> dict[str, dict[str, Any]]:
    """Each job: its experiment, seeds, overrides, and whether bf16-mixed applies."""
    mnist_limits = ["trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=1"]
    ood_limits = ["ood.max_images=64", "ood.neighbours.reference_images=500", "trainer.limit_test_batches=1"]
    small = [*mnist_limits, *ood_limits] if tiny else []
    return {
        "single": {
            "experiment": "ood_mnist_vae",
            "seeds": 1,
            "overrides": ["model/net=dense", *small],
            "bf16": True,
        },
        "census": {
            "experiment": "census_ca_2x2",
            "seeds": 8 if tiny else 1000,
            "overrides": ["trainer.max_epochs=50", "trainer.check_val_every_n_epoch=25"] if tiny else [],
            "bf16": False,
            "batched": True,
        },
        "ood_dense": {
            "experiment": "ood_mnist_vae",
            "seeds": 2 if tiny else 16,
            "overrides": ["model/net=dense", *small],
            "bf16": True,
            "batched": True,
        },
        "ood_conv": {
            "experiment": "ood_mnist_vae",
            "seeds": 2 if tiny else 4,
            "overrides": small,
            "bf16": True,
            "batched": True,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accelerator", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument(
        "--tiny", action="store_true", help="a few steps and seeds per job (the test suite's)"
    )
    parser.add_argument("--output", type=Path, default=PROJECT_ROOT / "bench" / "device.json")
    args = parser.parse_args()
    if args.accelerator == "cuda" and not torch.cuda.is_available():
        parser.error("--accelerator cuda: no CUDA device is visible here (use --accelerator cpu)")
    cuda = args.accelerator == "cuda"
    device = torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores)"
    results: dict[str, Any] = {
        "device": device,
        "accelerator": args.accelerator,
        "tiny": args.tiny,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "jobs": {},
    }
    trainer = "trainer=gpu" if cuda else "trainer=cpu"
    for name, job in jobs(args.tiny).items():
        precisions = ["32-true", "bf16-mixed"] if cuda and job["bf16"] else ["32-true"]
        for precision in precisions:
            overrides = [trainer, f"trainer.precision={precision}", *QUIET, *job["overrides"]]
            if job.get("batched"):
                overrides.append("hydra/launcher=batched")
            figures = timed_sweep(job["seeds"], job["experiment"], *overrides)
            figures["seeds"] = job["seeds"]
            figures["seeds_per_s"] = job["seeds"] / figures["seconds"]
            results["jobs"][f"{name}/{precision}"] = figures
            print(f"{name} {precision}: {json.dumps(figures)}", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print(f"written: {args.output}")


if __name__ == "__main__":
    main()

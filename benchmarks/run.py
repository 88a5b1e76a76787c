"""Benchmarks (not tests): `make bench` or `python -m benchmarks.run [names ...] [--repeats N]`.

Prints a table and writes bench/results.json. Every figure is the median of `--repeats` runs (each
itself the median over its epochs after the first); the machine is noisy, so compare ratios measured
in the same run, on an otherwise idle machine. Each measurement runs in its own process, so its peak
memory (resident set, and GPU memory where there is one) is its own.

vae_dense_mnist: the PyTorch example's VAE (784-400-20, batch 128, Adam 1e-3, Bernoulli decoder) on
MNIST, training images per second through (a) the framework, `python -m src.run` as a user runs it;
(b) a minimal hand-written loop over the same in-memory tensors; (c) that loop fed by torchvision's
per-sample dataset (PIL + ToTensor) through a DataLoader, as the example does; (d) `lightning_bare`:
the hand loop's model in a LightningModule with nothing else, fed by the framework's DataLoader,
through a Trainer with logging, checkpoints and validation off: the floor that Lightning's own
training loop sets; (e) `interleaved`: (d) with a hand-loop step after every Trainer step, both
timed, so that the ratio of their median step times is free of the machine's drift between runs;
(f) `framework_interleaved`: the same for the framework's own training
(src.pipeline.training.train in-process).

vae_conv_mnist: the conv VAE (conf/model/net/conv.yaml) through the framework.

Sweeps, in seeds per second end to end as a user runs them (`python -m src.run -m experiment=...
seed=...`: process start, training, every job folder and the sweep summary included), through the
batched launcher and one job at a time (Hydra's basic launcher, `--per-run-seeds` seeds, which pays
the process start once, not per seed):
- census: report 000's 2x2 CA census (5000 full-batch steps per seed), `--census-seeds` batched;
- lines_census: the line-image CA census (census_lines_ca, 200 epochs of minibatches), `--lines-seeds`;
- ood_dense: the MNIST VAE OOD sweep with the dense net (ood_mnist_vae model/net=dense), 16 seeds;
- ood_conv: the same with report 004's conv net, `--conv-batches` batches per epoch, 4 seeds.

With a GPU present, the VAE benchmarks run on it (the table's title names the device)."""

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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def timed_sweep(seeds: int, experiment: str, *overrides: str) -> dict[str, float]:
    """One sweep of `experiment` over `seeds` seeds, started as a user would: its wall-clock seconds
    (`seconds`) and, for a batched sweep, its chunks' training and finishing seconds (`train_s`,
    `finish_s`, from each chunk's timing.json). Each sweep compiles afresh, as on a new machine: its
    own inductor cache, so that one measurement does not find another's compiled graphs."""
    with tempfile.TemporaryDirectory() as output_root:
        command = [
            sys.executable,
            "-m",
            "src.run",
            "-m",
            f"experiment={experiment}",
            f"seed=range(0,{seeds})",
            f"paths.output_root={output_root}",
            *overrides,
        ]
        started = time.perf_counter()
        process = subprocess.run(
            command,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            env={
                **os.environ,
                "PYTHONPATH": str(PROJECT_ROOT),
                "TORCHINDUCTOR_CACHE_DIR": str(Path(output_root) / "inductor-cache"),
            },
        )
        seconds = time.perf_counter() - started
        if process.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{process.stderr[-3000:]}")
        chunks = [
            json.loads(path.read_text())
            for path in Path(output_root).glob("multiruns/*/batched/*/timing.json")
        ]
    figures = {"seconds": seconds}
    if chunks:
        figures["train_s"] = sum(chunk["train_s"] for chunk in chunks)
        figures["finish_s"] = sum(chunk["finish_s"] for chunk in chunks)
        figures["finish_ms_per_member"] = (
            1e3 * figures["finish_s"] / sum(chunk["written"] for chunk in chunks)
        )
    return figures


def _sweep_rates(
    repeats: int, batched_seeds: int, per_run_seeds: int, experiment: str, *overrides: str
) -> dict[str, Any]:
    """Seeds per second of a sweep batched and one job at a time, the runs of a repeat side by side,
    and the batched sweep's phases (medians)."""
    batched, per_run = [], []
    for _ in range(repeats):
        batched.append(timed_sweep(batched_seeds, experiment, *overrides, "hydra/launcher=batched"))
        per_run.append(timed_sweep(per_run_seeds, experiment, *overrides)["seconds"])
    batched_seconds = [run["seconds"] for run in batched]
    batched_rate = batched_seeds / statistics.median(batched_seconds)
    per_run_rate = per_run_seeds / statistics.median(per_run)
    phases = {
        f"batched_{key}": statistics.median(run[key] for run in batched)
        for key in ("train_s", "finish_s", "finish_ms_per_member")
        if key in batched[0]
    }
    return {
        "batched_seeds_per_s": batched_rate,
        "per_run_seeds_per_s": per_run_rate,
        "batched_over_per_run": batched_rate / per_run_rate,
        "batched_end_to_end_s": statistics.median(batched_seconds),
        **phases,
        "batched_seconds": batched_seconds,
        "per_run_seconds": per_run,
        "batched_seeds": batched_seeds,
        "per_run_seeds": per_run_seeds,
    }


def bench_census(args: argparse.Namespace) -> dict[str, Any]:
    return _sweep_rates(args.repeats, args.census_seeds, args.per_run_seeds, "census_ca_2x2")


def bench_lines_census(args: argparse.Namespace) -> dict[str, Any]:
    return _sweep_rates(args.sweep_repeats, args.lines_seeds, 1, "census_lines_ca")


OOD_SWEEP = ["figures=false", "logger=none", "print_config=false", "trainer.enable_progress_bar=false"]


def bench_ood_dense(args: argparse.Namespace) -> dict[str, Any]:
    return _sweep_rates(args.sweep_repeats, 16, 1, "ood_mnist_vae", "model/net=dense", *OOD_SWEEP)


def bench_ood_conv(args: argparse.Namespace) -> dict[str, Any]:
    limit = f"trainer.limit_train_batches={args.conv_batches}"
    return _sweep_rates(args.sweep_repeats, 4, 1, "ood_mnist_vae", limit, *OOD_SWEEP)


# --- VAE training throughput ---------------------------------------------------------------------
def _run_measured(command: list[str]) -> tuple[str, float]:
    """(stdout, peak resident memory in MiB) of a child process: its own peak, from wait4."""
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            stdout=stdout,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        )
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0), stderr.seek(0)
        if process.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{stderr.read()[-3000:]}")
        return stdout.read(), usage.ru_maxrss / 1024  # KiB on Linux


def _training_only(epochs: int, output_root: str) -> list[str]:
    """Overrides that make a framework run train and nothing else (no test, OOD or figures)."""
    return [
        f"trainer.max_epochs={epochs}", f"paths.output_root={output_root}", "test=false",
        "ood.enabled=false", "figures=false", "trainer.enable_progress_bar=false",
        "trainer.accelerator=auto", "print_config=false",
    ]  # fmt: skip


def _framework(overrides: list[str], epochs: int) -> dict[str, float]:
    """One `python -m src.run` training run: its metrics.json's images/s (median over epochs after the
    first) and the process's peak memory."""
    with tempfile.TemporaryDirectory() as output_root:
        command = [sys.executable, "-m", "src.run", *overrides, *_training_only(epochs, output_root)]
        _, peak_rss = _run_measured(command)
        (metrics_path,) = Path(output_root).glob("runs/*/metrics.json")
        metrics = json.loads(metrics_path.read_text())
    return {
        "images_per_s": metrics["train/images_per_s"],
        "peak_rss_mib": peak_rss,
        "peak_gpu_mib": metrics.get("train/peak_gpu_memory_mib", 0.0),
    }


def _worker(loop: str, epochs: int) -> dict[str, float]:
    """A hand-written loop (`handloop` or `torchvision`) in a child process."""
    stdout, peak_rss = _run_measured(
        [sys.executable, "-m", "benchmarks.run", "--worker", loop, "--epochs", str(epochs)]
    )
    return {**json.loads(stdout.strip().splitlines()[-1]), "peak_rss_mib": peak_rss}


class ExampleVAE(nn.Module):
    """The VAE of PyTorch's examples (vae/main.py): 784-400-20, ReLU, a Bernoulli decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        """The framework's VAE loss: per-image summed BCE + KL, averaged over the batch."""
        flat = images.flatten(1)
        hidden = F.relu(self.fc1(flat))
        mu, logvar = self.fc21(hidden), self.fc22(hidden)
        latent = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        logits = self.fc4(F.relu(self.fc3(latent)))
        bce = F.binary_cross_entropy_with_logits(logits, flat, reduction="none").sum(1)
        kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(1)
        return (bce + kl).mean()


def hand_loop(batches: Callable[[], Iterable[torch.Tensor]], epochs: int, device: torch.device) -> dict:
    """Train ExampleVAE with Adam(1e-3) on `batches()` per epoch; images/s per epoch."""
    torch.manual_seed(0)
    model = ExampleVAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rates = []
    for _ in range(epochs):
        started, images_seen = time.perf_counter(), 0
        for images in batches():
            images = images.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            model.loss(images).backward()
            optimizer.step()
            images_seen += len(images)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(images_seen / (time.perf_counter() - started))
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0
    return {"images_per_s": statistics.median(rates[1:] or rates), "peak_gpu_mib": peak_gpu}


class BareModule(pl.LightningModule):
    """ExampleVAE in a LightningModule and nothing else: no logging, no checks, one optimiser."""

    def __init__(self) -> None:
        super().__init__()
        self.vae = ExampleVAE()

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return self.vae.loss(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class InterleavedHandSteps(pl.Callback):
    """After every training step of a Trainer, one hand-loop step (ExampleVAE, Adam 1e-3, a random
    batch of the same tensors) on a model of its own; both timed. A pair runs milliseconds apart, so
    the machine's drift (tens of percent over seconds here) cancels, which runs in separate processes
    cannot promise. The Trainer's step is the time from the end of one hand step to the end of the
    next training batch: data, hooks, optimiser and all. The first epoch (warm-up) is skipped."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images
        self.model = ExampleVAE().to(images.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.trainer_step_s: list[float] = []
        self.hand_step_s: list[float] = []
        self._hand_ended: float | None = None

    def _now(self) -> float:
        if self.images.device.type == "cuda":
            torch.cuda.synchronize(self.images.device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._hand_ended = None

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
        if trainer.current_epoch == 0 and trainer.max_epochs > 1:
            return
        started = self._now()
        if self._hand_ended is not None:
            self.trainer_step_s.append(started - self._hand_ended)
        index = torch.randint(len(self.images), (BATCH_SIZE,), device=self.images.device)
        self.optimizer.zero_grad(set_to_none=True)
        self.model.loss(self.images[index]).backward()
        self.optimizer.step()
        self._hand_ended = self._now()
        self.hand_step_s.append(self._hand_ended - started)

    def figures(self) -> dict[str, float]:
        """The median Trainer and hand step times (ms), their ratio, and the number of hand steps."""
        trainer_step, hand_step = map(statistics.median, (self.trainer_step_s, self.hand_step_s))
        return {
            "hand_steps": float(len(self.hand_step_s)),
            "trainer_step_ms": 1e3 * trainer_step,
            "hand_step_ms": 1e3 * hand_step,
            "hand_step_over_trainer_step": hand_step / trainer_step,
        }


def lightning_loop(images: torch.Tensor, epochs: int, interleaved: bool = False) -> tuple[dict, BareModule]:
    """Train BareModule on `images` (batch 128, shuffled) through a Trainer with every extra off,
    fed by the framework's DataLoader over the tensors; images/s per epoch as the framework
    measures them (src.pipeline.callbacks.History), and the trained module. With `interleaved`, a
    hand-loop step follows every training step instead (InterleavedHandSteps), and the figures are
    the two median step times and their ratio."""
    from src.data.memory import TensorBatches, whole_batch
    from src.pipeline.callbacks import History

    torch.manual_seed(0)
    module = BareModule()
    interleaved_steps = InterleavedHandSteps(images) if interleaved else None
    loader = torch.utils.data.DataLoader(
        TensorBatches(images), batch_size=BATCH_SIZE, shuffle=True, collate_fn=whole_batch
    )
    with tempfile.TemporaryDirectory() as folder:
        history = History(Path(folder) / "history.csv")
        trainer = pl.Trainer(
            accelerator="auto", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
            callbacks=[history, *filter(None, [interleaved_steps])], default_root_dir=folder,
        )  # fmt: skip
        trainer.fit(module, loader)
    if interleaved_steps is not None:
        return interleaved_steps.figures(), module
    rates = [row["train/images_per_s"] for row in history.rows]
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    return {"images_per_s": statistics.median(rates[1:] or rates), "peak_gpu_mib": peak_gpu}, module


def framework_interleaved(images: torch.Tensor, epochs: int) -> dict[str, float]:
    """The framework's own training of the example VAE (src.pipeline.training.train on the config that
    `python -m src.run` gets in vae_dense_mnist: its module, data, callbacks and logger) with a
    hand-loop step after every step (InterleavedHandSteps): drift-free step times of the framework
    against the hand loop."""
    from src.pipeline.config import compose_config
    from src.pipeline.run import Run
    from src.pipeline.training import train

    steps = InterleavedHandSteps(images)
    with tempfile.TemporaryDirectory() as output_root:
        run_dir = Path(output_root) / "run"
        cfg = compose_config([*EXAMPLE_VAE, *_training_only(epochs, output_root)], run_dir)
        train(Run(cfg, run_dir), callbacks=[steps])
    return steps.figures()


def run_worker(loop: str, epochs: int) -> dict:
    """The loops beside the framework: `handloop` over the framework's in-memory training tensors
    (on the GPU when there is one), `lightning_bare`, `interleaved` and `framework_interleaved` over
    the same tensors, `torchvision` over datasets.MNIST + ToTensor + DataLoader."""
    from torchvision import datasets, transforms

    from src.data.torchvision_sets import data_root, load_torchvision_images
    from src.pipeline.process import prepare_training_process

    prepare_training_process()  # as src.run does, so that the loops differ only in what is measured
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    root = data_root(os.environ.get("DATA_ROOT"))
    if loop in ("lightning_bare", "interleaved", "framework_interleaved"):
        images = load_torchvision_images("MNIST", root, train=True, download=True).tensors[0].to(device)
        if loop == "framework_interleaved":
            return framework_interleaved(images, epochs)
        return lightning_loop(images, epochs, interleaved=loop == "interleaved")[0]
    if loop == "handloop":
        images = load_torchvision_images("MNIST", root, train=True, download=True).tensors[0].to(device)

        def batches() -> Iterable[torch.Tensor]:
            order = torch.randperm(len(images), device=device)
            return (images[index] for index in order.split(BATCH_SIZE))

        return hand_loop(batches, epochs, device)
    dataset = datasets.MNIST(str(root), train=True, download=True, transform=transforms.ToTensor())
    # The example's CPU settings (workers and pinning only with CUDA).
    cuda = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, **cuda)
    return hand_loop(lambda: (images for images, _ in loader), epochs, device)


BATCH_SIZE = 128
EXAMPLE_VAE = [
    "data=mnist", "model=vae", "model/net=dense", "model.net.hidden_dims=[400]", "model.latent_dim=20",
    "model.init=torch", "model.optimizer.lr=0.001", f"data.batch_size={BATCH_SIZE}", "logger=csv",
]  # fmt: skip


def _medians(runs: list[dict[str, float]], prefix: str) -> dict[str, float]:
    return {f"{prefix}_{key}": statistics.median(run[key] for run in runs) for key in runs[0]}


def bench_vae_dense_mnist(args: argparse.Namespace) -> dict[str, Any]:
    # Interleaved (in a rotating order), so that a slow spell of the machine hits all three alike.
    measure = {
        "framework": lambda: _framework(EXAMPLE_VAE, args.epochs),
        "handloop": lambda: _worker("handloop", args.epochs),
        "torchvision": lambda: _worker("torchvision", args.epochs),
        "lightning_bare": lambda: _worker("lightning_bare", args.epochs),
        "interleaved": lambda: _worker("interleaved", args.epochs),
        "framework_interleaved": lambda: _worker("framework_interleaved", args.epochs),
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in measure}
    for repeat in range(args.repeats):
        names = list(measure)
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            runs[name].append(measure[name]())
    results: dict[str, Any] = {}
    for name, measured in runs.items():
        results.update(_medians(measured, name))
    rates = {
        name: [run["images_per_s"] for run in measured]
        for name, measured in runs.items()
        if "images_per_s" in measured[0]
    }
    # Ratios of the runs of one repeat, minutes apart at most, then their median: the machine's
    # speed drifts by tens of percent over minutes (its other tenants), which cancels in a pair.
    for path, baseline in (
        ("framework", "handloop"), ("framework", "torchvision"),
        ("lightning_bare", "handloop"), ("framework", "lightning_bare"),
    ):  # fmt: skip
        pairs = zip(rates[path], rates[baseline], strict=True)
        results[f"{path}_over_{baseline}"] = statistics.median(a / b for a, b in pairs)
    results.update({f"{name}_images_per_s_runs": values for name, values in rates.items()})
    return results


def bench_vae_conv_mnist(args: argparse.Namespace) -> dict[str, Any]:
    overrides = [
        "data=mnist", "model=vae", "model/net=conv", f"data.batch_size={BATCH_SIZE}", "logger=csv",
        f"trainer.limit_train_batches={args.conv_batches}", "trainer.limit_val_batches=2",
    ]  # fmt: skip
    runs = [_framework(overrides, args.epochs) for _ in range(args.repeats)]
    return _medians(runs, "framework")


BENCHMARKS = {
    "vae_dense_mnist": bench_vae_dense_mnist,
    "vae_conv_mnist": bench_vae_conv_mnist,
    "census": bench_census,
    "lines_census": bench_lines_census,
    "ood_dense": bench_ood_dense,
    "ood_conv": bench_ood_conv,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", metavar="name", help=f"any of {list(BENCHMARKS)} (default: all)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per VAE run (the first is warm-up)")
    parser.add_argument("--conv-batches", type=int, default=60, help="batches per conv VAE epoch")
    workers = ["handloop", "torchvision", "lightning_bare", "interleaved", "framework_interleaved"]
    parser.add_argument("--worker", choices=workers, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--census-seeds", type=int, default=1000)
    parser.add_argument("--per-run-seeds", type=int, default=5)
    parser.add_argument("--lines-seeds", type=int, default=200)
    parser.add_argument("--sweep-repeats", type=int, default=1, help="repeats of the minibatch sweeps")
    parser.add_argument("--output", type=Path, default=PROJECT_ROOT / "bench" / "results.json")
    args = parser.parse_args()
    if unknown := sorted(set(args.names) - set(BENCHMARKS)):
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    if args.worker:
        print(json.dumps(run_worker(args.worker, args.epochs)))
        return
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    results: dict[str, Any] = {"device": device, "platform": platform.platform(), "repeats": args.repeats}
    table = Table(title=f"benchmarks on {device}, medians of {args.repeats}")
    table.add_column("benchmark")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name in args.names or list(BENCHMARKS):
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

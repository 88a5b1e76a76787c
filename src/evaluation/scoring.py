"""Per-image anomaly scores of a model over a set of images, in batches, with the input-complexity
correction of likelihoods (Serra et al. 2020) and the input's PNG length as a model-free baseline."""

from __future__ import annotations

import hashlib
import io
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from src.models.base import ReconstructionModel

# Likelihood scores (nats per image) that get an input-complexity-corrected twin `<name>_ic`.
LIKELIHOOD_SCORES = ("neg_elbo", "neg_elbo_iw")


# PNG lengths of the image sets seen in this process, by content: they depend on the images alone,
# and the members of a batched sweep (or the jobs of a sweep in one process) score the same sets.
_PNG_BITS: dict[bytes, torch.Tensor] = {}
_PNG_BITS_KEPT = 32


def png_bits(images: torch.Tensor) -> torch.Tensor:
    """Length in bits of each image (N, 1, H, W) in [0, 1] as an 8-bit grayscale PNG at the highest
    compression level: L(x), the input-complexity estimate of Serra et al. (ICLR 2020). Computed
    once per distinct set of images in a process."""
    pixels = (images[:, 0] * 255).round().to(torch.uint8).cpu().numpy()
    key = _png_key(pixels)
    if key not in _PNG_BITS:
        if len(_PNG_BITS) >= _PNG_BITS_KEPT:
            _PNG_BITS.pop(next(iter(_PNG_BITS)))
        _PNG_BITS[key] = png_lengths(images)
    return _PNG_BITS[key].clone()


_PNG_SECONDS: dict[bytes, float] = {}


def png_seconds_per_image(images: torch.Tensor) -> float:
    """The seconds `png_lengths` takes per image of `images`, timed once per distinct set in a
    process (for the cost of the score, which every member of a sweep reports)."""
    key = _png_key((images[:, 0] * 255).round().to(torch.uint8).cpu().numpy())
    if key not in _PNG_SECONDS:
        if len(_PNG_SECONDS) >= _PNG_BITS_KEPT:
            _PNG_SECONDS.pop(next(iter(_PNG_SECONDS)))
        started = time.perf_counter()
        png_lengths(images)
        _PNG_SECONDS[key] = (time.perf_counter() - started) / len(images)
    return _PNG_SECONDS[key]


def _png_key(pixels: Any) -> bytes:
    return hashlib.sha1(pixels.tobytes() + str(pixels.shape).encode()).digest()


def png_lengths(images: torch.Tensor) -> torch.Tensor:
    """`png_bits` computed afresh, without the cache."""
    lengths = []
    for image in (images[:, 0] * 255).round().to(torch.uint8).cpu().numpy():
        buffer = io.BytesIO()
        Image.fromarray(image, mode="L").save(buffer, format="PNG", optimize=True, compress_level=9)
        lengths.append(8 * buffer.tell())
    return torch.tensor(lengths, dtype=torch.float64)


@torch.no_grad()
def score_images(
    model: ReconstructionModel,
    images: torch.Tensor,
    batch_size: int = 500,
    samples: int = 0,
    regret_steps: int = 0,
    timings: dict[str, float] | None = None,
    pass_scores: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Every anomaly score of the model for each image (float64 tensors (N,), higher = more anomalous), in
    batches, plus `<score>_ic` = score in bits - PNG length in bits for each likelihood score
    (Serra et al. 2020's remedy for likelihoods that favour simple inputs) and `png_bits` itself.
    Sampled scores use a fixed seed, so the same images in the same batches get the same scores.
    With `regret_steps` > 0, a VAE's `likelihood_regret` too (that many optimiser steps per batch).
    `timings`, when given, gets the seconds spent: `pass` (the scores of one deterministic pass),
    `neg_elbo_iw` and `likelihood_regret` (each on top of it). `pass_scores`, when given, are the
    deterministic pass's scores of these images, already computed (for the members of a batched
    sweep at once): only the sampled scores are then computed here."""
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    if pass_scores is not None:
        parts = {
            name: [value.double().cpu()]
            for name, value in pass_scores.items()
            if name in model.anomaly_scores
        }
    sampled = (samples and "neg_elbo_iw" in model.anomaly_scores) or (
        regret_steps and "likelihood_regret" in model.anomaly_scores
    )
    spent = timings if timings is not None else {}

    def timed(part: str, compute: Callable[..., Any], *arguments: Any) -> Any:
        started = time.perf_counter()
        result = compute(*arguments)
        if model.device.type == "cuda":  # the work queued on the GPU is part of the cost
            torch.cuda.synchronize(model.device)
        spent[part] = spent.get(part, 0.0) + time.perf_counter() - started
        return result

    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(0)
        for batch in images.split(batch_size) if pass_scores is None or sampled else ():
            batch = batch.to(model.device)
            if pass_scores is None:
                for name, value in timed("pass", model.scores, batch).items():
                    if name in model.anomaly_scores:
                        parts.setdefault(name, []).append(value.double().cpu())
            if samples and "neg_elbo_iw" in model.anomaly_scores:
                bound = timed("neg_elbo_iw", model.importance_weighted_nll, batch, samples)
                parts.setdefault("neg_elbo_iw", []).append(bound.double().cpu())
            if regret_steps and "likelihood_regret" in model.anomaly_scores:
                regret = timed("likelihood_regret", model.likelihood_regret, batch, regret_steps)
                parts.setdefault("likelihood_regret", []).append(regret.double().cpu())
    scores = {name: torch.cat(values) for name, values in parts.items()}
    complexity = png_bits(images)
    for name in LIKELIHOOD_SCORES:
        if name in scores:
            scores[f"{name}_ic"] = scores[name] / math.log(2) - complexity
    # Not a model score: the input's complexity alone, a baseline that shows how much of a
    # separation (or of the _ic correction) needs no model at all.
    scores["png_bits"] = complexity
    return scores


@torch.no_grad()
def latent_codes(model: ReconstructionModel, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The deterministic bottleneck value of each image, in batches, on the CPU."""
    model.eval()
    return torch.cat([model.code(batch.to(model.device)).cpu() for batch in images.split(batch_size)])

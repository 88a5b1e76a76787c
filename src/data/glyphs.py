"""Near-OOD images that ship with the project's own dependencies: glyphs of other alphabets,
symbols and typed digits, drawn from the DejaVu fonts that matplotlib installs with itself (no
download, the same on every machine).

Each image is made as MNIST's digits were: the glyph, white on black, scaled so that its longer
side is 20 pixels of a 28x28 image (in proportion for other sizes) and placed with its centre of
mass at the centre. A random typeface (sans, serif, mono; regular, bold, oblique), a rotation of up
to `MAX_ROTATION_DEG` and a scale of 0.8-1 vary the strokes, from a generator the caller seeds."""

from __future__ import annotations

import functools
from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
TYPEFACES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
)
# The characters of each set. Letters that look like digits (O, l, I, S, Z, B, o, b, g, q) stay
# in: near-OOD sets are meant to be hard.
GLYPH_SETS: dict[str, str] = {
    "latin": "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    "greek": "ΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩαβγδεζηθικλμνξοπρστυφχψω",
    "cyrillic": "АБВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯабвгдежзийклмнопрстуфхцчшщъыьэюя",
    "symbols": "∑∏∫√∞≈≠≤≥±×÷∂∇∈∩∪⊂⊕⊗→←↑↓↔⇒♠♣♥♦★☆✓✗☺♪§¶@#&%$€£¥?!",
    "typed_digits": "0123456789",
}
MAX_ROTATION_DEG = 15.0
# Glyphs are drawn this many times larger than the image, then reduced (smooth strokes).
OVERSAMPLE = 4


@functools.cache
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT_DIR / name), size)


@functools.cache
def typefaces_with(character: str) -> tuple[str, ...]:
    """The typefaces that have a glyph for `character` (a missing one would be drawn as a box)."""
    from matplotlib.ft2font import FT2Font

    faces = tuple(name for name in TYPEFACES if ord(character) in FT2Font(str(FONT_DIR / name)).get_charmap())
    if not faces:
        raise ValueError(f"no typeface of {list(TYPEFACES)} has a glyph for {character!r}")
    return faces


def render_glyph(character: str, size: int, typeface: str, rotation_deg: float, scale: float) -> np.ndarray:
    """One glyph as a (size, size) array in [0, 1], MNIST-style (see the module docstring)."""
    canvas = size * OVERSAMPLE * 2
    image = Image.new("L", (canvas, canvas), 0)
    ImageDraw.Draw(image).text(
        (canvas // 2, canvas // 2), character, fill=255, font=_font(typeface, size * OVERSAMPLE), anchor="mm"
    )
    image = image.rotate(rotation_deg, resample=Image.Resampling.BILINEAR)
    box = image.getbbox()
    if box is None:
        raise ValueError(f"{typeface} has no visible glyph for {character!r}")
    glyph = image.crop(box)
    fitted = max(1, round(size * 20 / 28 * scale))  # MNIST: the longer side in a 20x20 box
    ratio = fitted / max(glyph.size)
    glyph = glyph.resize(
        (max(1, round(glyph.width * ratio)), max(1, round(glyph.height * ratio))), Image.Resampling.LANCZOS
    )
    pixels = np.asarray(glyph, dtype=np.float64) / 255.0
    # Centre of mass at the image centre, as MNIST's digits are placed.
    rows, cols = np.indices(pixels.shape)
    mass = pixels.sum()
    top = round((size - 1) / 2 - (rows * pixels).sum() / mass)
    left = round((size - 1) / 2 - (cols * pixels).sum() / mass)
    out = np.zeros((size, size))
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + pixels.shape[0], size), min(left + pixels.shape[1], size)
    out[r0:r1, c0:c1] = pixels[r0 - top : r1 - top, c0 - left : c1 - left]
    return np.clip(out, 0.0, 1.0)


def glyph_images(name: str, count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """`count` images (count, 1, size, size) of the glyph set `name`, characters drawn uniformly."""
    characters = GLYPH_SETS[name]
    picks = torch.randint(len(characters), (count,), generator=generator)
    faces = torch.rand(count, generator=generator, dtype=torch.float64)  # among those with the glyph
    rotations = (torch.rand(count, generator=generator, dtype=torch.float64) * 2 - 1) * MAX_ROTATION_DEG
    scales = 0.8 + 0.2 * torch.rand(count, generator=generator, dtype=torch.float64)
    images = []
    for pick, face, rotation, scale in zip(picks, faces, rotations, scales, strict=True):
        character = characters[int(pick)]
        candidates = typefaces_with(character)
        typeface = candidates[min(int(float(face) * len(candidates)), len(candidates) - 1)]
        images.append(render_glyph(character, size, typeface, float(rotation), float(scale)))
    return torch.from_numpy(np.stack(images)).float().unsqueeze(1)

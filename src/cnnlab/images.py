"""Image files → decoded L or RGB images, and the resizes the readers need.

The one place that opens image files, so prepare, predict, visualize and style read every mode alike and fail
with the same one-line errors. Arrays come out as numpy, not tensors: data.sources works in numpy.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab.errors import UserError

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
GREY_MODES = frozenset({"1", "L", "LA", "I", "F"})  # and the I;16 family: kept grey when channels=None


def _wide_grey(mode: str) -> bool:
    return mode in ("I", "F") or mode.startswith("I;16")


def image_files(path: str | Path) -> list[Path]:
    """A file → [it] (whatever its extension); a folder → its image files, subfolders included, sorted."""
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise UserError(f"no image files in {path}")
        return files
    if not p.is_file():
        raise UserError(f"image {path} does not exist")
    return [p]


def to_mode(im: Image.Image, channels: int | None = None) -> Image.Image:
    """Any PIL mode → L (channels=1) or RGB (channels=3); channels=None keeps grey images grey.

    Transparency is composited over white: dropping alpha would expose whatever colour the transparent pixels
    happen to store, often black. 16-bit and float greys are stretched to 0..255: PIL's convert clips them.
    """
    grey = channels == 1 if channels is not None else im.mode in GREY_MODES or _wide_grey(im.mode)
    if _wide_grey(im.mode):
        a = np.asarray(im, dtype=np.float64)
        lo, hi = a.min(), a.max()
        im = Image.fromarray(((a - lo) / max(hi - lo, 1e-12) * 255).round().astype(np.uint8))
    elif im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
    return im.convert("L" if grey else "RGB")


def open_image(path: str | Path, channels: int | None = None) -> Image.Image:
    """Decode an image file (first frame) as L or RGB, see `to_mode`. UserError when missing or unreadable."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"image {path} does not exist")
    try:
        with warnings.catch_warnings():
            # PIL only warns between 89 and 179 megapixels (it refuses above): such a file is refused here
            # too, in one line (data.skip_bad_images skips it), not decoded into gigabytes with a warning
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                return to_mode(im, channels)  # a new image: usable after the file is closed
    except Exception as e:  # PIL raises many types for truncated, unknown and decompression-bomb files
        raise UserError(f"cannot read image {path}: {type(e).__name__}: {e}") from None


def chw(im: Image.Image) -> np.ndarray:
    """L or RGB image → uint8 [C, H, W], C-contiguous and writable (torch.from_numpy takes it as is)."""
    arr = np.asarray(im, dtype=np.uint8)  # read-only, backed by PIL's buffer
    return np.array(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1), order="C")  # a copy


def resize_square(im: Image.Image, size: int) -> Image.Image:
    """size×size, aspect not kept, bilinear: what the prepared data holds, so classifier inputs match it."""
    return im if im.size == (size, size) else im.resize((size, size), Image.Resampling.BILINEAR)


def center_crop(im: Image.Image, size: int, fraction: float) -> Image.Image:
    """The ImageNet evaluation transform: shorter side to size / fraction (bicubic), then the central
    size×size (fraction 0.875: 256 → 224)."""
    short = round(size / fraction)
    w, h = im.size
    im = im.resize((max(short, round(w * short / h)), max(short, round(h * short / w))),
                   Image.Resampling.BICUBIC)
    left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
    return im.crop((left, top, left + size, top + size))


def thumbnail(im: Image.Image, max_side: int) -> Image.Image:
    """Aspect kept, longer side ≤ max_side, never enlarged (Lanczos)."""
    im = im.copy()  # PIL's thumbnail works in place
    im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return im


def fit_long_side(im: Image.Image, long_side: int, min_side: int) -> Image.Image:
    """Aspect kept, longer side = long_side, shorter side raised to min_side if it would fall below. Upscales
    too (Lanczos); reducing_gap=3 keeps large downscales fast and still antialiased."""
    w, h = im.size
    s = long_side / max(w, h)
    size = (max(round(w * s), min_side), max(round(h * s), min_side))
    return im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)

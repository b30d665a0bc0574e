"""Whole-batch conversion and augmentation on the batch's device (one kernel per op, no per-image loop)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [B,C,H,W] (0–255) or float (0–1) → float, (x - mean) / std per channel on the [0, 1] scale."""
    x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def random_crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Random translation by up to `padding` px (reflect-padded, then a random HxW window per image)."""
    b, _, h, w = x.shape
    xp = F.pad(x, (padding,) * 4, mode="reflect")
    dy = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # [B,1,H,1]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # [B,1,1,W]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return xp[batch, chan, rows, cols]


def random_flip(x: torch.Tensor) -> torch.Tensor:
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def image_bits(images: torch.Tensor) -> torch.Tensor:
    """A fixed pseudo-random bit per uint8 image (parity of its pixel sum): the same image gets the same bit
    in every epoch without the loader carrying indices."""
    return images.view(len(images), -1).sum(1, dtype=torch.int64) & 1


def alternating_flip(x: torch.Tensor, bits: torch.Tensor, epoch: int) -> torch.Tensor:
    """airbench's flip: each image is mirrored in every other epoch (which half starts is `bits`), so two
    epochs show both views of every image instead of a random 75%."""
    flip = (bits ^ (epoch & 1)).bool()
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def translate(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift by (dy, dx) px (|shift| < size), the uncovered border filled by reflection. An index gather, so
    any dtype: test-time views of uint8 images are the same as of normalised ones (the shift commutes with
    per-pixel normalisation), which lets TTA run on any model that takes images as files hold them."""
    def reflected(n: int, shift: int) -> torch.Tensor:
        i = (torch.arange(n, device=x.device) - shift).abs()
        return (n - 1) - ((n - 1) - i).abs()
    h, w = x.shape[-2:]
    return x[..., reflected(h, dy)[:, None], reflected(w, dx)]


def tta_logits(forward, x: torch.Tensor, mirror: bool = True, shift: bool = True) -> torch.Tensor:
    """Test-time augmentation (airbench): ½·mean(x, mirror x) + ¼·mean of the mirrored pair of each of the
    1-px shifts up-left and down-right: 6 forward passes, logits averaged. A view helps only a model
    trained to be invariant to it (Fashion-MNIST models trained without flips lost 4–11 points to the
    mirror), so `mirror` and `shift` (models trained with flips, crops) choose them; neither: one pass."""
    def mirrored(v):
        return 0.5 * (forward(v) + forward(v.flip(3))) if mirror else forward(v)
    if not shift:
        return mirrored(x)
    return 0.5 * mirrored(x) + 0.25 * (mirrored(translate(x, -1, -1)) + mirrored(translate(x, 1, 1)))


def cutout(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero a size×size square at a random centre per image (DeVries & Taylor 2017; may overlap the
    border)."""
    b, _, h, w = x.shape
    top = torch.randint(0, h, (b, 1, 1), device=x.device) - size // 2
    left = torch.randint(0, w, (b, 1, 1), device=x.device) - size // 2
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    hole = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return x.masked_fill(hole[:, None], 0.0)


def augment(x: torch.Tensor, crop_padding: int = 0, flip: bool = False, cutout_size: int = 0) -> torch.Tensor:
    if crop_padding:
        x = random_crop(x, crop_padding)
    if flip:
        x = random_flip(x)
    if cutout_size:
        x = cutout(x, cutout_size)
    return x

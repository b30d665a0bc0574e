"""Gatys et al. losses. Content and style terms are relative errors ‖a − b‖² / ‖b‖², so a weight means the
same for every network, layer width, image size and with or without SWAG (raw VGG and Lite0 activations differ
in scale by orders of magnitude, and a Gram matrix squares that)."""

from __future__ import annotations

import torch


def gram(f: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] → [N, C, C] channel correlations averaged over positions (so independent of image size:
    a style image and the result may differ in size)."""
    f = f.flatten(2).float()
    return f @ f.transpose(1, 2) / f.shape[-1]


def relative(a: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (a.float() - target).pow(2).sum() / target.pow(2).sum().clamp(min=1e-12)


def blend_grams(grams: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Several style images: Σ w_k ‖G − A_k‖² = ‖G − Σ w_k A_k‖² + const when Σ w_k = 1, so one blended
    target per layer gives the same gradients as one loss per style image, at a single loss's cost."""
    return sum(w * g for w, g in zip(weights, grams))


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring pixels (x in [0, 1]): penalises high-frequency noise."""
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()

"""The panel (content | style images | result) and the loss curves of a style transfer, as PNG files."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from matplotlib.figure import Figure

from cnnlab.io import write_figure
from cnnlab.style.images import to_uint8


def panel_png(images: list[torch.Tensor], titles: list[str], path: str | Path, height: float = 2.6,
              dpi: int = 110) -> None:
    """Images side by side at one height (widths follow their aspect ratios), a title above each."""
    widths = [img.shape[-1] / img.shape[-2] for img in images]
    fig = Figure(figsize=(height * sum(widths) + 0.1 * len(images), height + 0.35), layout="constrained")
    axes = fig.subplots(1, len(images), width_ratios=widths, squeeze=False)[0]
    for ax, img, title in zip(axes, images, titles):
        ax.imshow(to_uint8(img), interpolation="antialiased")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    write_figure(fig, path, dpi)


def loss_curves_png(history: list[dict], path: str | Path, title: str = "") -> None:
    """Content, style, TV and total loss per evaluation (log scale); dotted lines where a new scale starts."""
    keys = ["content", "style", "tv", "total"]
    fig = Figure(figsize=(12, 3), layout="constrained")
    starts = [r["iteration"] for a, r in itertools.pairwise(history) if r["scale"] != a["scale"]]
    for ax, k in zip(fig.subplots(1, len(keys)), keys):
        it = [r["iteration"] for r in history]
        v = [r[k] for r in history]
        ax.plot(it, v, lw=1.2)
        if min(v, default=0) > 0:
            ax.set_yscale("log")
        for s in starts:
            ax.axvline(s, color="gray", ls=":", lw=1)
        ax.set_title(k if k != "tv" else "total variation", fontsize=10)
        ax.set_xlabel("evaluation (forward + backward)")
        ax.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title, fontsize=10)
    write_figure(fig, path)

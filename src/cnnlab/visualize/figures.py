"""PNGs of cnnlab.visualize.explain's tensors, made like cnnlab.evaluation.plots (Figure, no pyplot,
atomic)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure

from cnnlab.evaluation.plots import _image
from cnnlab.io import write_figure


def _show(ax, img: torch.Tensor, title: str = "", **kw) -> None:
    arr, cmap = _image(img)
    # nearest keeps 28-32 px images' pixels honest; large photos read better antialiased
    ax.imshow(arr, cmap=cmap, vmin=0, vmax=255,
              interpolation="nearest" if img.shape[-1] <= 64 else "antialiased")
    ax.set_title(title, fontsize=8, **kw)
    ax.axis("off")


def short(text: str, n: int = 24) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def maps_png(images: torch.Tensor, rows: list[tuple[list[str], torch.Tensor]], titles: list[str],
             colors: list[str], path: str | Path, title: str, overlay: bool, cbar: str, q: float = 1.0,
             ncols: int = 8, dpi: int = 110) -> None:
    """images uint8 [N,C,H,W], each titled; below it one map per `rows` entry (panel titles, float [N,H,W]),
    each divided by its own q-quantile (1.0: max) and drawn over the image (`overlay`) or alone. One image:
    its panels side by side, up to 5 a row."""
    n, r = len(images), len(rows) + 1
    cols = min(r, 5) if n == 1 else min(ncols, n)
    nrows = math.ceil(r / cols) if n == 1 else math.ceil(n / cols) * r
    fig = Figure(figsize=(1.75 * cols + 0.9, 1.85 * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")

    def cell(i: int, k: int):  # panel k (0: the image itself) of image i
        return axes[k // cols, k % cols] if n == 1 else axes[i // cols * r + k, i % cols]

    im = None
    for i, img in enumerate(images):
        _show(cell(i, 0), img, titles[i], color=colors[i])
        for k, (labels, maps) in enumerate(rows, 1):
            ax = cell(i, k)
            m = maps[i] / max(float(maps[i].max() if q >= 1 else np.quantile(maps[i].numpy(), q)), 1e-12)
            if overlay:
                _show(ax, img)
            im = ax.imshow(m.clamp(max=1).numpy(), cmap="jet" if overlay else "inferno",
                           alpha=0.5 if overlay else 1.0, vmin=0, vmax=1,
                           interpolation="nearest" if m.shape[-1] <= 64 else "bilinear")
            ax.set_title(labels[i], fontsize=8)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8 if nrows > 1 else 1.0, label=cbar)
    fig.suptitle(title, fontsize=10)
    write_figure(fig, path, dpi)


def filters_png(weight: torch.Tensor, path: str | Path, title: str, dpi: int = 110) -> None:
    """Conv weights [O, I, k, k] as a grid: RGB when I = 3 (each filter stretched to its own range), else a
    diverging map of the weights (the mean over inputs when I > 1) on one shared scale."""
    w = weight[:128].float()
    o, i = w.shape[:2]
    ncols = 8 if o <= 64 else 16
    nrows = math.ceil(o / ncols)
    fig = Figure(figsize=(0.85 * ncols + (0.2 if i == 3 else 1.0), 0.9 * nrows + 0.7), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    if i == 3:
        lo, hi = w.amin((1, 2, 3), keepdim=True), w.amax((1, 2, 3), keepdim=True)
        panels, kw = ((w - lo) / (hi - lo).clamp(min=1e-12)).permute(0, 2, 3, 1), {}
        note = "RGB, each filter stretched to its own range"
    else:
        panels = w.mean(1)
        m = float(panels.abs().max().clamp(min=1e-12))
        kw = {"cmap": "RdBu_r", "vmin": -m, "vmax": m}
        note = "weights" if i == 1 else f"mean weight over {i} input channels"
    im = None
    for idx, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if idx < o:
            im = ax.imshow(panels[idx].numpy(), interpolation="nearest", **kw)
            ax.set_title(str(idx), fontsize=7)
    if i != 3:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label=note)
    fig.suptitle(f"{title}\n{note}" if i == 3 else title, fontsize=10)
    write_figure(fig, path, dpi)


def feature_maps_png(image: torch.Tensor, acts: dict[str, torch.Tensor], headings: dict[str, str],
                     path: str | Path, title: str, max_maps: int = 16, ncols: int = 8,
                     dpi: int = 110) -> None:
    """The input beside, per layer, its `max_maps` most active channels (largest mean positive activation),
    each stretched to its own range: what a channel responds to, not how strongly (the titles give the
    max)."""
    rows = [math.ceil(min(max_maps, a.shape[0]) / ncols) for a in acts.values()]
    cols = min(ncols, max(min(max_maps, a.shape[0]) for a in acts.values()))
    fig = Figure(figsize=(1.05 * cols + 3.2, sum(1.1 * r + 0.45 for r in rows) + 0.4), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[2.2, 1.05 * cols + 1.0])
    _show(left.subplots(), image, "input")
    for sub, (name, a), r in zip(right.subfigures(len(acts), 1, height_ratios=[1.1 * r + 0.45 for r in rows],
                                                  squeeze=False).ravel(), acts.items(), rows):
        top = a.clamp(min=0).mean((1, 2)).argsort(descending=True, stable=True)[:max_maps]
        axes = sub.subplots(r, cols, squeeze=False)
        im = None
        for idx, ax in enumerate(axes.ravel()):
            ax.axis("off")
            if idx < len(top):
                m = a[top[idx]]
                im = ax.imshow(m.numpy(), cmap="viridis", vmin=float(m.min()),
                               vmax=max(float(m.max()), float(m.min()) + 1e-6), interpolation="nearest")
                ax.set_title(f"ch {int(top[idx])} ≤{float(m.max()):.3g}", fontsize=7)
        cb = sub.colorbar(im, ax=axes.ravel().tolist(), shrink=0.9, ticks=list(im.get_clim()))
        cb.ax.set_yticklabels(["min", "max"])
        c, h, w = a.shape
        sub.suptitle(f"{headings.get(name, name)}: {c}×{h}×{w}, {len(top)} most active channels", fontsize=9)
    fig.suptitle(title, fontsize=10)
    write_figure(fig, path, dpi)


_CHANNELS = {3: [("red", "red"), ("green", "green"), ("blue", "blue")], 1: [("grey", "white")]}


def kernels_png(image: torch.Tensor, kernels: dict[str, torch.Tensor], filtered: dict[str, torch.Tensor],
                path: str | Path, title: str, dpi: int = 110) -> None:
    """The image, its channels (rows) and each channel filtered by each kernel (columns, kernel drawn on top);
    one colour scale per kernel: symmetric around 0 for kernels summing to ~0 (edge detectors)."""
    c, h, w = image.shape
    chans = _CHANNELS[c]
    k = len(kernels)
    side = 1.6 * w / max(h, w)
    fig = Figure(figsize=(side * (k + 2) + 0.3, 1.6 * h / max(h, w) * c + 1.8), layout="constrained")
    gs = fig.add_gridspec(c + 1, k + 2, height_ratios=[0.6] + [1.0] * c)
    _show(fig.add_subplot(gs[1:, 0]), image, "image")
    for row, (name, color) in enumerate(chans, 1):
        cmap = LinearSegmentedColormap.from_list(name, ["black", color])
        ax = fig.add_subplot(gs[row, 1])
        ax.imshow(image[row - 1].numpy(), cmap=cmap, vmin=0, vmax=255, interpolation="antialiased")
        ax.set_title(f"{name} channel", fontsize=8)
        ax.axis("off")
    for col, (name, kern) in enumerate(kernels.items(), 2):
        ax = fig.add_subplot(gs[0, col])
        m = float(kern.abs().max().clamp(min=1e-12))
        ax.imshow(kern.numpy(), cmap="RdBu_r", vmin=-m, vmax=m)
        unit = float(kern.abs()[kern != 0].min()) if kern.any() else 1.0
        ints = kern / unit
        scaled = unit < 1 and round(1 / unit) == 1 / unit and bool((ints - ints.round()).abs().max() < 1e-4)
        if kern.numel() <= 25:  # numbers fit up to 5×5; a blur's 1/256ths shown as whole numbers
            for (y, x), v in zip(torch.cartesian_prod(*map(torch.arange, kern.shape)).tolist(),
                                 kern.flatten()):
                ax.text(x, y, f"{float(v / unit if scaled else v):.3g}", ha="center", va="center", fontsize=6,
                        color="white" if abs(float(v)) > m / 2 else "black")
        ax.set_title(f"{name} (×1/{round(1 / unit)})" if scaled else name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        out, total = filtered[name].numpy(), float(kern.sum())
        # edge responses are sparse: the 99.5th percentile, not the max, keeps the edges visible
        if abs(total) < 1e-3 * float(kern.abs().sum()):  # sums to 0: an edge detector, signed output
            hi = max(float(np.quantile(np.abs(out), 0.995)), 1e-6)
            lo = -hi
        elif abs(total - 1) < 1e-3:  # keeps brightness (blur, sharpen): the image's own range
            lo, hi = 0.0, 255.0
        else:
            lo, hi = (float(v) for v in np.quantile(out, [0.005, 0.995]))
        axes = [fig.add_subplot(gs[row, col]) for row in range(1, c + 1)]
        for ax, chan in zip(axes, out):
            im = ax.imshow(chan, cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6), interpolation="antialiased")
            ax.axis("off")
        fig.colorbar(im, ax=axes, location="bottom", shrink=0.9, aspect=15, extend="both")
    fig.suptitle(title, fontsize=10)
    write_figure(fig, path, dpi)

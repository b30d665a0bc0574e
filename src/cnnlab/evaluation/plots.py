"""Evaluation figures and CSV tables, each written atomically (a crash never leaves a half-written PNG).

Figures are built with `matplotlib.figure.Figure`, not pyplot: no GUI backend is ever selected (headless by
construction, PNG goes through Agg), and no global figure registry can leak figures across calls.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from matplotlib.figure import Figure

from cnnlab.io import write_figure

RIGHT, WRONG = "tab:blue", "tab:red"  # as in the seed notebooks


def _image(img: torch.Tensor):
    """uint8 [C,H,W] → (array for imshow, cmap)."""
    if img.shape[0] == 1:
        return img[0].cpu().numpy(), "gray"
    return img[:3].permute(1, 2, 0).cpu().numpy(), None


def _grid(images: torch.Tensor, titles: list[str], colors: list[str], path, ncols: int, title: str | None):
    n = len(titles)
    if n == 0:
        fig = Figure(figsize=(4, 2))
        fig.text(0.5, 0.5, title or "nothing to show", ha="center", va="center")
        return write_figure(fig, path)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(1.6 * ncols, 1.8 * nrows + (0.4 if title else 0)), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, img, t, c in zip(axes, images, titles, colors):
        arr, cmap = _image(img)
        ax.imshow(arr, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")  # nearest: 28-32 px images
        ax.set_title(t, color=c, fontsize=8)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    write_figure(fig, path)


def prediction_grid_png(images: torch.Tensor, preds: torch.Tensor, labels: torch.Tensor,
                        class_names: list[str], path: str | Path, ncols: int = 8,
                        title: str | None = None) -> None:
    """Every image in `images` (uint8 [N,C,H,W]) titled "pred (true)", blue when right, red when wrong."""
    p, t = preds.tolist(), labels.tolist()
    _grid(images, [f"{class_names[a]} ({class_names[b]})" for a, b in zip(p, t)],
          [RIGHT if a == b else WRONG for a, b in zip(p, t)], path, ncols, title)


def confident_mistakes_png(images: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor,
                           class_names: list[str], path: str | Path, n: int = 16, ncols: int = 8) -> None:
    """The `n` wrong predictions with the highest confidence, titled "pred p=0.97 (true)"."""
    conf, preds = probs.max(1)
    wrong = (preds != labels).nonzero().flatten()
    idx = wrong[conf[wrong].argsort(descending=True, stable=True)][:n]
    if len(idx) == 0:
        return _grid(images[:0], [], [], path, ncols, "no mistakes")
    p, c, t = preds[idx].tolist(), conf[idx].tolist(), labels[idx].tolist()
    _grid(images[idx], [f"{class_names[a]} p={q:.2f} ({class_names[b]})" for a, q, b in zip(p, c, t)],
          [WRONG] * len(idx), path, ncols, f"most confident mistakes ({len(idx)} of {len(wrong)})")


def confusion_matrix_png(cm: torch.Tensor, class_names: list[str], path: str | Path,
                         normalize: bool = True) -> None:
    """Heatmap, rows = true, columns = predicted; `normalize` divides each row by its support (recall on the
    diagonal). Cell text only when K <= 20: beyond that it is unreadable at any sane figure size."""
    cm = cm.detach().cpu().double()
    k = len(class_names)
    vals = cm / cm.sum(1, keepdim=True).clamp(min=1) if normalize else cm  # clamp: empty class row → 0
    side = min(max(4.0, 0.45 * k + 2.5), 24.0)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(vals.numpy(), cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class" if normalize else "count")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    n, acc = int(cm.sum()), float(cm.trace() / cm.sum().clamp(min=1))
    ax.set_title(f"confusion matrix{' (row-normalised)' if normalize else ''}: n={n}, accuracy={acc:.2%}")
    if k <= 20:
        hi = float(vals.max()) / 2
        for i in range(k):
            for j in range(k):
                v = float(vals[i, j])
                text = f"{v:.0%}" if normalize else f"{int(v)}"
                if normalize and k <= 10:
                    text += f"\n{int(cm[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7 if k > 10 else 8,
                        color="white" if v > hi else "black")
    write_figure(fig, path)


def training_curves_png(history: list[dict], path: str | Path) -> None:
    """One panel per metric `<m>` found as `train/<m>` or `val/<m>`; x = row["epoch"] (else the row index).
    Missing or None/NaN values are skipped, so a val metric logged every k epochs still draws."""
    names = list(dict.fromkeys(k.split("/", 1)[1] for row in history for k in row
                               if k.startswith(("train/", "val/"))))
    if not names:
        fig = Figure(figsize=(4, 2))
        fig.text(0.5, 0.5, "no train/ or val/ metrics logged", ha="center", va="center")
        return write_figure(fig, path)
    fig = Figure(figsize=(4.2 * len(names), 3.4), layout="constrained")
    for ax, name in zip(fig.subplots(1, len(names), squeeze=False).ravel(), names):
        for split, color in (("train", "tab:blue"), ("val", "tab:orange")):
            pts = [(row.get("epoch", i), row[f"{split}/{name}"]) for i, row in enumerate(history)
                   if row.get(f"{split}/{name}") is not None and not math.isnan(row[f"{split}/{name}"])]
            if pts:
                # markers: a run of one epoch (or a sparse val series) is a point, not a line
                ax.plot(*zip(*pts), marker="o", markersize=3, color=color, label=split)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    write_figure(fig, path)

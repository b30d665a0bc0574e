"""Model interpretation and CNN visualisation behind `cnnlab visualize` (issue 7), and Grad-CAM for
`evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cnnlab.evaluation.plots import RIGHT, WRONG
from cnnlab.visualize.explain import Subject, from_classifier, gradcam, gradcam_layer, probabilities, saliency
from cnnlab.visualize.figures import maps_png, short

if TYPE_CHECKING:
    from cnnlab.tasks.classifier import Classifier


def explain_png(s: Subject, images: torch.Tensor, labels: torch.Tensor | None, path: str | Path,
                method: str = "gradcam", layers: list[str] | None = None, target: int | None = None,
                class_names: list[str] | None = None, dpi: int = 110) -> dict:
    """Grad-CAM (per layer) or saliency of the predicted class, and of class `target` when given, for uint8
    images [N,C,H,W] → one PNG. Returns the predictions."""
    names = class_names or s.class_names
    conf, preds = probabilities(s, images).max(1)
    p, c = preds.tolist(), conf.tolist()
    layers = (layers or [gradcam_layer(s)]) if method == "gradcam" else [None]
    rows = []
    for layer in layers:
        at = f" @{short(layer, 12)}" if len(layers) > 1 else ""
        for targets in [p] + ([[target] * len(p)] if target is not None else []):
            maps = gradcam(s, images, targets, layer) if layer else saliency(s, images, targets)
            rows.append(([f"for {short(names[t], 16)}{at}" for t in targets], maps))
    if labels is None:
        titles, colors = [f"{short(names[a])} p={q:.2f}" for a, q in zip(p, c)], ["black"] * len(p)
    else:
        t = labels.tolist()
        titles = [f"{short(names[a], 14)} p={q:.2f} ({short(names[b], 14)})" for a, q, b in zip(p, c, t)]
        colors = [RIGHT if a == b else WRONG for a, b in zip(p, t)]
    cam = method == "gradcam"
    kinds = {n: type(m).__name__ for n, m in s.net.named_modules()}
    what = (f"Grad-CAM at {', '.join(f'{n} ({kinds[n]})' for n in layers)}" if cam
            else "saliency |∂ logit / ∂ input|")
    maps_png(images, rows, titles, colors, path,
             f"{s.name}: {what}; titles: pred p{' (true)' if labels is not None else ''}",
             overlay=cam, cbar="Grad-CAM / its max" if cam else "saliency / its 99th percentile",
             q=1.0 if cam else 0.99, dpi=dpi)  # saliency is spiky: its max would leave the rest black
    return {"pred": [names[a] for a in p], "prob": [round(q, 4) for q in c]}


def gradcam_grid_png(model: Classifier, images_uint8: torch.Tensor, labels: torch.Tensor,
                     class_names: list[str], path: str | Path, n: int = 8) -> None:
    """Grad-CAM of the predicted class for the first `n` images (uint8 [N,C,H,W]) of a cnnlab `Classifier`, at
    its last conv layer, titled "pred p (true)": the grid `cnnlab evaluate` adds to its report."""
    was_training = model.training
    model.eval()
    try:
        explain_png(from_classifier(model, "test images"), images_uint8[:n], labels[:n], path,
                    class_names=list(class_names))
    finally:
        model.train(was_training)


__all__ = ["explain_png", "gradcam_grid_png"]

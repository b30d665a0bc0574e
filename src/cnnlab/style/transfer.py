"""Gatys et al. optimisation: the pixels of one image are fitted to a content image's activations and the Gram
matrices of one or more style images, coarse to fine over `scales`."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from cnnlab.errors import UserError
from cnnlab.style.features import FeatureNet
from cnnlab.style.images import luminance, resize, with_chroma
from cnnlab.style.losses import blend_grams, gram, relative, total_variation


@dataclass
class Settings:
    content_layers: list[str]
    style_layers: list[str]
    content_weight: float = 1.0
    style_weight: float = 1e3
    tv_weight: float = 0.0
    init: str = "content"  # content | style | noise
    optimizer: str = "lbfgs"  # lbfgs | adam
    iterations: int = 300  # forward+backward passes per scale
    lr: float | None = None  # None: 1 for L-BFGS, 0.02 for Adam (pixels in [0, 1])
    lbfgs_history: int = 10
    lbfgs_chunk: int = 25  # L-BFGS evaluations between clamps of the image to [0, 1]
    line_search: str | None = None  # None or "strong_wolfe"
    scales: list[float] = field(default_factory=lambda: [1.0])
    min_side: int = 32
    preserve_color: bool = False
    seed: int = 0
    channels_last: bool = False


@dataclass
class Result:
    image: torch.Tensor  # [3, H, W] in [0, 1], CPU
    history: list[dict]  # one row per evaluation: scale, iteration, content, style, tv, total
    final: dict[str, float]  # losses of the returned image (after the last clamp)
    seconds: float
    restarts: int = 0  # L-BFGS runaways undone (see stylise)


def check(s: Settings) -> None:
    if s.init not in ("content", "style", "noise"):
        raise UserError(f"style.init={s.init!r}: use content, style or noise")
    if s.optimizer not in ("lbfgs", "adam"):
        raise UserError(f"style.optimizer={s.optimizer!r}: use lbfgs or adam")
    if s.line_search not in (None, "strong_wolfe"):
        raise UserError(f"style.line_search={s.line_search!r}: use null or strong_wolfe")
    if s.iterations < 1 or not s.scales or any(not 0 < f <= 4 for f in s.scales):
        raise UserError(f"style.iterations ≥ 1 and style.scales fractions in (0, 4] (got {s.iterations}, "
                        f"{list(s.scales)})")
    if not s.content_layers and not s.style_layers:
        raise UserError("style.content_layers and style.style_layers are both empty")


def _hw(img: torch.Tensor, f: float, min_side: int) -> tuple[int, int]:
    return tuple(max(round(n * f), min_side) for n in img.shape[-2:])


def _losses(feats: Callable, P: dict, A: dict, s: Settings, img: torch.Tensor) -> dict[str, torch.Tensor]:
    f = feats(img)
    lc = sum(relative(f[k], P[k]) for k in s.content_layers) / max(len(s.content_layers), 1)
    ls = sum(relative(gram(f[k]), A[k]) for k in s.style_layers) / max(len(s.style_layers), 1)
    tv = total_variation(img)
    return {"content": lc, "style": ls, "tv": tv,
            "total": s.content_weight * lc + s.style_weight * ls + s.tv_weight * tv}


def _fit(x: torch.Tensor, losses: Callable, s: Settings, scale: int, history: list[dict], total: int,
         progress: Callable | None) -> int:
    """Optimise the pixels `x` in place for s.iterations evaluations, appending to `history`; leaves `x` at
    the best image seen. Returns how many runaways were undone."""
    best = {"total": float("inf"), "x": None}
    end = len(history) + s.iterations

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        out = losses(x)
        out["total"].backward()
        row = {"scale": scale, "iteration": len(history) + 1,
               **{k: float(v.detach()) for k, v in out.items()}}
        history.append(row)
        if row["total"] < best["total"]:
            best.update(total=row["total"], x=x.detach().clone())
        if progress:
            progress(row["iteration"], total, row)
        return out["total"]

    def optimizer() -> torch.optim.Optimizer:
        if s.optimizer == "lbfgs":
            return torch.optim.LBFGS([x], lr=s.lr or 1.0, history_size=s.lbfgs_history,
                                     line_search_fn=s.line_search, tolerance_grad=0, tolerance_change=0)
        return torch.optim.Adam([x], lr=s.lr or 0.02)

    opt, restarts = optimizer(), 0
    while len(history) < end:
        if s.optimizer == "lbfgs":  # max_eval bounds the passes in one step() (max_iter alone does not)
            left = end - len(history)
            opt.param_groups[0].update(max_iter=left, max_eval=min(s.lbfgs_chunk, left))
        opt.step(closure)
        with torch.no_grad():
            # L-BFGS without line search can run away (seen with SWAG on hubble_deep_field: the loss grew 30×
            # and stayed there): go back to the best image and start a fresh curvature history.
            if not history[-1]["total"] < 2 * best["total"]:
                x.copy_(best["x"])
                opt, restarts = optimizer(), restarts + 1
            x.clamp_(0, 1)
    if history[-1]["total"] > best["total"]:  # the last evaluation is not always the best one
        with torch.no_grad():
            x.copy_(best["x"]).clamp_(0, 1)
    return restarts


def stylise(net: FeatureNet, content: torch.Tensor, styles: list[torch.Tensor], weights: list[float],
            s: Settings, device: torch.device,
            progress: Callable[[int, int, dict], None] | None = None) -> Result:
    """content [3, H, W], styles [3, h, w] (already at their full working size), weights summing to 1."""
    check(s)
    t0 = time.perf_counter()
    fmt = torch.channels_last if s.channels_last else torch.contiguous_format
    net = net.to(device, memory_format=fmt)
    work = luminance(content) if s.preserve_color else content
    styles = [luminance(st, like=content) for st in styles] if s.preserve_color else styles

    def feats(img: torch.Tensor) -> dict[str, torch.Tensor]:
        return net(img.to(device)[None].contiguous(memory_format=fmt))

    net.calibrate(work.to(device)[None].contiguous(memory_format=fmt))  # softmax_temperature=auto: T/layer
    history: list[dict] = []
    total, x, restarts = s.iterations * len(s.scales), None, 0
    for scale in s.scales:
        hw = _hw(work, scale, s.min_side)
        c = resize(work, hw)
        with torch.no_grad():  # targets are constants of the optimisation
            P = {k: v.float() for k, v in feats(c).items() if k in s.content_layers}
            fs = [feats(resize(st, _hw(st, scale, s.min_side))) for st in styles]
            A = {k: blend_grams([gram(f[k]) for f in fs], weights) for k in s.style_layers}
            del fs
        if x is not None:
            x0 = resize(x.detach(), hw)
        elif s.init == "content":
            x0 = c
        elif s.init == "style":
            x0 = resize(styles[0], hw)
        else:  # uniform noise from a CPU generator: the same image on every device
            x0 = torch.rand(3, *hw, generator=torch.Generator().manual_seed(s.seed))
        x = x0.to(device).clone().requires_grad_(True)
        losses = functools.partial(_losses, feats, P, A, s)
        restarts += _fit(x, losses, s, max(hw), history, total, progress)
    with torch.no_grad():
        final = {k: float(v) for k, v in losses(x).items()}
    image = x.detach().float().cpu()
    if s.preserve_color:
        image = with_chroma(image, resize(content, tuple(image.shape[-2:])))
    return Result(image, history, final, time.perf_counter() - t0, restarts)

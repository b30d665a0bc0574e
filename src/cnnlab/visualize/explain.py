"""What a CNN sees, as tensors: learned first-layer filters, feature maps, Grad-CAM and saliency (captum).

A model enters as a `Subject`: a net taking normalised input plus the uint8 → input conversion it was trained
with, so a cnnlab checkpoint and a pretrained ImageNet backbone are explained by the same code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnlab.errors import UserError

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass
class Subject:
    net: nn.Module  # normalised input → logits, eval mode
    prep: Callable[[torch.Tensor], torch.Tensor]  # uint8 [N,C,H,W] → the net's input, on its device
    in_shape: tuple[int, int, int]  # the images `prep` takes
    class_names: list[str]
    name: str  # for titles and file names
    shapes: dict[str, tuple[int, ...]] | None = None  # spatial_layers' answer, kept: it costs a forward pass


def from_classifier(model, name: str = "model") -> Subject:
    """A cnnlab `Classifier`: its net and its `preprocess` (the training normalisation, no augmentation)."""
    return Subject(model.net, lambda x: model.preprocess(x.to(model.device)),
                   tuple(model.hparams.in_shape), list(model.hparams.class_names), name)


def from_pretrained(pre, device: torch.device, name: str) -> Subject:
    """A `cnnlab.models.pretrained.Pretrained` ImageNet classifier with its own input statistics."""
    net = pre.net.to(device).eval()
    mean, std = (torch.tensor(v, device=device).view(1, -1, 1, 1) for v in (pre.mean, pre.std))
    return Subject(net, lambda x: (x.to(device).float() / 255 - mean) / std,
                   (3, pre.input_size, pre.input_size), list(pre.categories), name)


@contextlib.contextmanager
def _hooks(net: nn.Module, names: list[str], fn: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    mods = dict(net.named_modules())

    def hook(name):
        def record(module, inputs, out):  # returns None: a hook's return value would replace the output
            if isinstance(out, torch.Tensor):
                fn(name, out)
        return record
    handles = [mods[n].register_forward_hook(hook(n)) for n in names]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def spatial_layers(s: Subject) -> dict[str, tuple[int, ...]]:
    """Every submodule with a 4-D output → its output shape, in forward order (one pass on a blank image)."""
    if s.shapes is None:
        shapes: dict[str, tuple[int, ...]] = {}
        names = [n for n, _ in s.net.named_modules() if n]
        with _hooks(s.net, names, lambda n, o: o.dim() == 4 and shapes.setdefault(n, tuple(o.shape[1:]))), \
                torch.no_grad():
            s.net(s.prep(torch.zeros(1, *s.in_shape, dtype=torch.uint8)))
        s.shapes = shapes
    return s.shapes


def conv_layers(net: nn.Module, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """The names worth offering, in forward order: convs, blocks holding convs (not their insides: a residual
    or inverted-residual block is one unit) and stages of such blocks."""
    mods = dict(net.named_modules())
    with_conv = {n for n in shapes if any(isinstance(m, nn.Conv2d) for m in mods[n].modules())}
    blocks = [n for n in with_conv if not isinstance(mods[n], (*CONTAINERS, nn.Conv2d))]
    return [n for n in shapes if n in with_conv and not any(n.startswith(b + ".") for b in blocks)]


def check_layers(s: Subject, names: list[str]) -> dict[str, tuple[int, ...]]:
    shapes = spatial_layers(s)
    if bad := [n for n in names if n not in shapes]:
        raise UserError(f"{s.name} has no layer {', '.join(map(repr, bad))} with a spatial output; layers: "
                        f"{', '.join(conv_layers(s.net, shapes))} (their submodules' names work too)")
    return shapes


def default_feature_layers(s: Subject, k: int = 4) -> list[str]:
    """Up to k conv-level layers spread from the first to the last (the finest units: no stages)."""
    layers = conv_layers(s.net, spatial_layers(s))
    leaves = [n for n in layers if not any(m.startswith(n + ".") for m in layers)]
    if len(leaves) <= k:
        return leaves
    return [leaves[round(i * (len(leaves) - 1) / (k - 1))] for i in range(k)]


def gradcam_layer(s: Subject) -> str:
    """The last conv-level layer with more than one pixel: where Grad-CAM keeps the most semantics and
    space."""
    shapes = spatial_layers(s)
    layers = [n for n in conv_layers(s.net, shapes) if shapes[n][1] * shapes[n][2] > 1]
    if not layers:
        raise UserError(f"{s.name} has no conv layer with a spatial output for Grad-CAM")
    return layers[-1]


def first_conv(s: Subject) -> tuple[str, torch.Tensor]:
    """(name, weight [O, I, k, k]) of the first convolution in forward order."""
    mods = dict(s.net.named_modules())
    for n in spatial_layers(s):
        if isinstance(mods[n], nn.Conv2d):
            return n, mods[n].weight.detach().float().cpu()
    raise UserError(f"{s.name} has no conv layer (an MLP has no filters to show)")


@torch.no_grad()
def activations(s: Subject, image: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """uint8 [C,H,W] → {layer: its output [C', h, w]} for the listed layers."""
    check_layers(s, names)
    out: dict[str, torch.Tensor] = {}
    with _hooks(s.net, names, lambda n, o: out.setdefault(n, o[0].detach().float().cpu())):
        s.net(s.prep(image[None]))
    return {n: out[n] for n in names}


@torch.no_grad()
def probabilities(s: Subject, images: torch.Tensor) -> torch.Tensor:
    return s.net(s.prep(images)).float().softmax(1).cpu()


@contextlib.contextmanager
def _grad_on() -> Iterator[None]:
    # callers may sit in no_grad or inference_mode (evaluate predicts under inference_mode)
    with torch.inference_mode(False), torch.enable_grad():
        yield


def gradcam(s: Subject, images: torch.Tensor, targets: list[int], layer: str) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) of class targets[i] for images[i] (uint8 [N,C,H,W]) at `layer`,
    ReLU'd and bilinearly upsampled to the image size: float [N, H, W] ≥ 0.

    Channel weights are spatially averaged gradients, which assumes a global-average-pool head. Behind a
    flatten head (the seed CNNs) the weights of a position-coded class can average out and the map go blank
    or land elsewhere; tests/test_visualize.py's sanity check measured it."""
    from captum.attr import LayerAttribution, LayerGradCam

    check_layers(s, [layer])
    with _grad_on():
        x = s.prep(images.clone())
        cam = LayerGradCam(s.net, s.net.get_submodule(layer)).attribute(x, target=targets,
                                                                         relu_attributions=True)
        cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return cam.detach()[:, 0].float().clamp(min=0).cpu()  # clamp: bilinear can undershoot by rounding


def saliency(s: Subject, images: torch.Tensor, targets: list[int]) -> torch.Tensor:
    """|∂ logit_target / ∂ input| (Simonyan et al. 2014), max over colour channels: float [N, H, W]."""
    from captum.attr import Saliency

    with _grad_on():
        g = Saliency(s.net).attribute(s.prep(images.clone()).requires_grad_(), target=targets, abs=True)
    return g.detach().amax(1).float().cpu()


def class_index(names: list[str], target) -> int:
    """A class given by index or by name (case-insensitive) → its index."""
    if isinstance(target, str) and target.strip().lstrip("-").isdigit():
        target = int(target)
    if isinstance(target, int) and not isinstance(target, bool):
        if 0 <= target < len(names):
            return target
        raise UserError(f"target_class {target} is out of range: the model has {len(names)} classes")
    folded = [n.lower() for n in names]
    if str(target).lower() in folded:
        return folded.index(str(target).lower())
    shown = ", ".join(names[:12]) + (f", … ({len(names)} in all)" if len(names) > 12 else "")
    raise UserError(f"target_class {target!r} is not a class name or index; classes: {shown}")


def model_tag(ckpt: str | Path) -> str:
    """<run folder>/model/best.ckpt → <run folder>-best: output names that say which model drew them."""
    p = Path(ckpt).resolve()
    return f"{(p.parent.parent if p.parent.name == 'model' else p.parent).name}-{p.stem}"


_SOBEL = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
_BINOMIAL = torch.tensor([1.0, 4, 6, 4, 1])
KERNELS = {  # the seed notebook's "focusing on filters" set
    "sobel x": torch.tensor(_SOBEL, dtype=torch.float32),  # responds to vertical edges
    "sobel y": torch.tensor(_SOBEL, dtype=torch.float32).T,  # horizontal edges
    "blur": torch.outer(_BINOMIAL, _BINOMIAL) / 256,  # 5×5 Gaussian (binomial) blur
    "sharpen": torch.tensor([[0.0, -1, 0], [-1, 5, -1], [0, -1, 0]]),
}


def kernels_from_config(extra) -> dict[str, torch.Tensor]:
    """KERNELS plus the user's {name: [[...], ...]} (rectangular lists of numbers)."""
    if extra is not None and not isinstance(extra, dict):
        raise UserError("visualize.kernels must map names to kernels, e.g. "
                        f"{{emboss: [[-2,-1,0],[-1,1,1],[0,1,2]]}}; got {extra!r}")
    out = dict(KERNELS)
    for name, rows in (extra or {}).items():
        try:
            k = torch.tensor([[float(v) for v in row] for row in rows], dtype=torch.float32)
        except (TypeError, ValueError):  # ragged rows, strings, a scalar instead of a list
            k = None
        if k is None or k.dim() != 2 or k.numel() == 0:
            raise UserError(f"visualize.kernels.{name} must be a rectangular list of lists of numbers, "
                            f"e.g. [[0,-1,0],[-1,5,-1],[0,-1,0]]; got {rows}")
        out[str(name)] = k
    return out


def filter_image(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """uint8 [C,H,W] → float [C,H,W]: each channel cross-correlated with `kernel` (what a conv layer
    computes), edge-padded so the output keeps the size and the borders show no false edges."""
    kh, kw = kernel.shape
    x = torch.nn.functional.pad(image.float()[:, None], ((kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2),
                                mode="replicate")
    return torch.nn.functional.conv2d(x, kernel[None, None].float())[:, 0]

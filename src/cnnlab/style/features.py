"""A pretrained feature network cut after the deepest layer a style transfer uses; returns named activations.

The network's trunk is flattened into one nn.Sequential of its blocks (EfficientNet-Lite0: conv_stem, bn1,
blocks.0.0 … blocks.6.0; VGG: features.0 … features.36) and truncated there: at 512 px the cut at blocks.3
skips the last stages of Lite0 entirely. Any module inside the kept blocks can be named (forward hooks catch
it); a Sequential container's output is its last child's.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import UserError

TRUNKS = {"efficientnet_lite0": ("conv_stem", "bn1", "blocks"), "vgg19": ("features",)}


def vgg_names(features: nn.Sequential) -> dict[str, str]:
    """Friendly VGG names → module names: conv4_2 → features.21, relu4_2 → features.22, pool4 → features.27.
    Gatys et al. used Caffe's in-place ReLU, so their "conv4_2" is our relu4_2."""
    names, block, n = {}, 1, 0
    for i, m in enumerate(features):
        if isinstance(m, nn.Conv2d):
            n += 1
            names[f"conv{block}_{n}"] = f"features.{i}"
        elif isinstance(m, nn.ReLU):
            names[f"relu{block}_{n}"] = f"features.{i}"
        elif isinstance(m, nn.MaxPool2d):
            names[f"pool{block}"] = f"features.{i}"
            block, n = block + 1, 0
    return names


def _flatten(name: str, module: nn.Module, out: list[tuple[str, nn.Module]]) -> None:
    if isinstance(module, nn.Sequential):
        for k, child in module.named_children():
            _flatten(f"{name}.{k}", child, out)
    else:
        out.append((name, module))


@torch.no_grad()
def fold_batchnorm(module: nn.Module) -> None:
    """Fold every eval-mode BatchNorm that directly follows a conv (in definition order, which is forward
    order in timm's EfficientNet blocks and stem) into that conv; a timm BatchNormAct2d leaves its activation.
    Same outputs (to 2e-5), and the BN passes disappear from every forward and backward: −35 to −42% time per
    evaluation at 512 px with Lite0 (docs/BENCHMARKS.md)."""
    for parent in module.modules():
        children = list(parent.named_children())
        for (_, conv), (bn_name, bn) in itertools.pairwise(children):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                    and bn.track_running_stats):
                continue
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias, requires_grad=False)
            act, drop = getattr(bn, "act", nn.Identity()), getattr(bn, "drop", nn.Identity())
            setattr(parent, bn_name, act if isinstance(drop, nn.Identity) else nn.Sequential(drop, act))


def swag(f: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """SWAG (Wang et al., CVPR 2021): softmax over all C×H×W activations of a layer (their official code's
    `softmax3d(x / T)`), times C·H·W so the mean stays 1 and the relative losses keep their scale."""
    return F.softmax(f.flatten(1).float() / temperature, dim=1).view_as(f) * f[0].numel()


class FeatureNet(nn.Module):
    """`net(x)` with x [N, 3, H, W] in [0, 1] → {layer: activation} for `layers`."""

    def __init__(self, net: nn.Module, network: str, mean: list[float], std: list[float], layers: list[str],
                 softmax: bool = False, temperature: float | str = 1.0):
        super().__init__()
        net.eval()
        fold_batchnorm(net)
        blocks: list[tuple[str, nn.Module]] = []
        for top in TRUNKS[network]:
            _flatten(top, net.get_submodule(top), blocks)
        aliases = vgg_names(net.features) if network.startswith("vgg") else {}
        modules = {n: m for top in TRUNKS[network]
                   for n, m in net.get_submodule(top).named_modules(prefix=top)}
        unknown = [name for name in layers if aliases.get(name, name) not in modules]
        if unknown:
            top = list(aliases) or list(dict.fromkeys(n for b, _ in blocks for n in (b.rsplit(".", 1)[0], b)))
            more = " (or features.<i>)" if aliases else " (or any submodule, e.g. blocks.2.0.bn1)"
            raise UserError(f"unknown {network} layer(s) {', '.join(unknown)}; valid: {', '.join(top)}{more}")
        self.layers = list(dict.fromkeys(layers))
        self.at_block: dict[int, list[str]] = {}  # block index → layer names that are that block's output
        deepest = 0
        for name in self.layers:
            target = aliases.get(name, name)
            idx = [i for i, (b, _) in enumerate(blocks) if b == target or b.startswith(target + ".")]
            if idx:  # a block or a container of blocks: its output is the last block's
                self.at_block.setdefault(idx[-1], []).append(name)
                deepest = max(deepest, idx[-1])
            else:  # a module inside one block: caught by a hook while that block runs
                i = next(i for i, (b, _) in enumerate(blocks) if target.startswith(b + "."))
                modules[target].register_forward_hook(self._hook(name))
                deepest = max(deepest, i)
        for m in net.modules():  # in-place activations would overwrite a captured conv output
            if hasattr(m, "inplace"):
                m.inplace = False
        self.body = nn.Sequential(*(m for _, m in blocks[: deepest + 1])).eval().requires_grad_(False)
        self.block_names = [b for b, _ in blocks[: deepest + 1]]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.softmax = softmax
        # "auto": one T per layer, the std of its activations on the image given to calibrate(). Lite0's block
        # outputs have std 7-10, and at T = 1 softmax makes them peakier, not smoother (see docs/style.md).
        self.temperature: dict[str, float] | float | str = temperature
        self._out: dict[str, torch.Tensor] = {}

    def _hook(self, name: str):
        def hook(module, args, output):
            self._out[name] = output
        return hook

    def train(self, mode: bool = True):
        return super().train(False)  # BatchNorm keeps its ImageNet statistics: this is a fixed feature map

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._out = {}
        x = (x - self.mean) / self.std
        for i, block in enumerate(self.body):
            x = block(x)
            for name in self.at_block.get(i, ()):
                self._out[name] = x
        out, self._out = {n: self._out[n] for n in self.layers}, {}
        if not self.softmax:
            return out
        if self.temperature == "auto":
            raise RuntimeError("softmax_temperature=auto: call calibrate(image) first")
        t = self.temperature
        return {n: swag(f, t[n] if isinstance(t, dict) else t) for n, f in out.items()}

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Fix the per-layer temperatures of softmax_temperature=auto on `x` (the content image)."""
        if self.softmax and (self.temperature == "auto" or isinstance(self.temperature, dict)):
            softmax, self.softmax = self.softmax, False
            self.temperature = {n: max(float(f.float().std()), 1e-3) for n, f in self(x).items()}
            self.softmax = softmax


def feature_net(network: str, layers: list[str], weights_path: str | None = None, softmax: bool = False,
                temperature: float | str = 1.0) -> FeatureNet:
    from cnnlab.models.pretrained import load_pretrained

    if network not in TRUNKS:
        raise UserError(f"style.network={network!r}: use {' or '.join(TRUNKS)}")
    if softmax and temperature != "auto" and not (isinstance(temperature, (int, float)) and temperature > 0):
        raise UserError(f"style.softmax_temperature must be auto or > 0, got {temperature!r}")
    p = load_pretrained(network, weights_path=weights_path)
    return FeatureNet(p.net, network, p.mean, p.std, layers, softmax, temperature)



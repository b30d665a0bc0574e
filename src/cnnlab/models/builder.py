"""A CNN described in config: stages of conv blocks (plain or residual), each downsampling by 2."""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.errors import UserError
from cnnlab.models.network import Network

POOLS = ("max", "avg", "stride", "none")
HEADS = ("gap", "flatten")


def pooled_size(in_shape: tuple[int, int, int], n: int, model: str, ceil: bool = False) -> tuple[int, int]:
    """Height, width after n halvings (pooling floors, a stride-2 odd-kernel conv ceils); UserError at 0."""
    if len(in_shape) != 3 or not all(isinstance(s, int) and s > 0 for s in in_shape):
        raise UserError(f"{model}: input shape must be 3 positive ints (channels, height, width), "
                        f"got {in_shape}")
    _, h, w = in_shape
    if not ceil and min(h, w) < 2 ** n:
        raise UserError(f"{model}: {h}×{w} images are too small for {n} downsamplings by 2 "
                        f"(need {2 ** n}×{2 ** n})")
    return (-(-h // 2 ** n), -(-w // 2 ** n)) if ceil else (h // 2 ** n, w // 2 ** n)


def same_conv(c_in: int, c_out: int, k: int, bias: bool = True) -> list[nn.Module]:
    """Stride-1 "same" conv; an even kernel is padded right/bottom by one more, as Keras/TF do. An explicit
    ZeroPad2d rather than padding="same", which warns on every even-kernel model and pads the same way."""
    if k % 2:
        return [nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=bias)]
    return [nn.ZeroPad2d((k // 2 - 1, k // 2) * 2), nn.Conv2d(c_in, c_out, k, bias=bias)]


def _conv(c_in: int, c_out: int, k: int, stride: int, bn: bool) -> list[nn.Module]:
    # stride 2 pads (k-1)//2: ceil(H/2) for odd k, floor(H/2) for even k. BN's shift makes a bias redundant.
    conv = (same_conv(c_in, c_out, k, bias=not bn) if stride == 1
            else [nn.Conv2d(c_in, c_out, k, stride=stride, padding=(k - 1) // 2, bias=not bn)])
    return [*conv, nn.BatchNorm2d(c_out)] if bn else conv


class BasicBlock(nn.Module):
    """ResNet basic block: conv-bn-relu-conv-bn + shortcut (1×1 projection when width or stride changes)."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, bn: bool):
        super().__init__()
        self.body = nn.Sequential(*_conv(c_in, c_out, k, stride, bn), nn.ReLU(),
                                  *_conv(c_out, c_out, k, 1, bn))
        self.shortcut = (nn.Sequential(*_conv(c_in, c_out, 1, stride, bn))
                         if c_in != c_out or stride != 1 else nn.Identity())
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class CNN(nn.Sequential, Network):
    """VGG-like (residual=False) or ResNet-like (residual=True) net.

    Args:
        widths: output channels of each stage; every stage ends with a downsampling by 2 (pool="max"/"avg"),
            or starts with a stride-2 conv from the second stage on (pool="stride", as ResNets do);
            "none" keeps the full resolution.
        blocks_per_stage: conv blocks per stage (a residual block holds two convs).
        head: "gap" = global average pool → linear (any image size), "flatten" = flatten → linear.
        hidden: width of an optional dense layer before the classifier (0 = none).
        dropout: after each stage and after the hidden layer (0 = none).
    """

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, widths: list[int],
                 blocks_per_stage: int = 1, kernel_size: int = 3, batch_norm: bool = True, pool: str = "max",
                 residual: bool = False, dropout: float = 0.0, head: str = "gap", hidden: int = 0):
        if pool not in POOLS:
            raise UserError(f"CNN: unknown pool {pool!r}; valid: {', '.join(POOLS)}")
        if head not in HEADS:
            raise UserError(f"CNN: unknown head {head!r}; valid: {', '.join(HEADS)}")
        if not widths or not all(isinstance(w, int) and w > 0 for w in widths):
            raise UserError(f"CNN: widths must be a non-empty list of positive ints, got {widths}")
        for name, v in [("blocks_per_stage", blocks_per_stage), ("kernel_size", kernel_size)]:
            if not isinstance(v, int) or v < 1:
                raise UserError(f"CNN: {name} must be a positive int, got {v!r}")
        if not 0 <= dropout < 1 or hidden < 0:
            raise UserError(f"CNN: need 0 <= dropout < 1 and hidden >= 0, got {dropout=}, {hidden=}")
        n_down = {"max": len(widths), "avg": len(widths), "stride": len(widths) - 1, "none": 0}[pool]
        h, w = pooled_size(tuple(in_shape), n_down, "CNN", ceil=pool == "stride" and kernel_size % 2)

        layers, c = [], in_shape[0]
        for i, width in enumerate(widths):
            for j in range(blocks_per_stage):
                stride = 2 if pool == "stride" and i > 0 and j == 0 else 1
                layers += ([BasicBlock(c, width, kernel_size, stride, batch_norm)] if residual
                           else [*_conv(c, width, kernel_size, stride, batch_norm), nn.ReLU()])
                c = width
            layers += {"max": [nn.MaxPool2d(2)], "avg": [nn.AvgPool2d(2)]}.get(pool, [])
            layers += [nn.Dropout(dropout)] if dropout else []
        flat = c if head == "gap" else c * h * w
        layers += [nn.AdaptiveAvgPool2d(1)] if head == "gap" else []
        layers += [nn.Flatten()]
        if hidden:
            layers += [nn.Linear(flat, hidden), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
            flat = hidden
        layers += [nn.Linear(flat, num_classes)]
        super().__init__(*layers)  # PyTorch's default init: with BN the initial scale matters little
        self.in_shape = tuple(in_shape)

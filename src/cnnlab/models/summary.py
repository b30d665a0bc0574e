"""Keras-style `model.summary()` table from forward hooks; plain text, so it reads the same in a file."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _shape(out) -> str:
    if isinstance(out, torch.Tensor):
        return str((None, *out.shape[1:])).replace("None,)", "None)")  # batch dim as Keras prints it
    if isinstance(out, (tuple, list)):
        return ", ".join(_shape(o) for o in out)
    return type(out).__name__


def summary_table(model: nn.Module, in_shape: Sequence[int]) -> str:
    """One row per call of a leaf module during a forward pass on one zero image of in_shape (C, H, W)."""
    rows, hooks = [], []
    for name, m in model.named_modules():
        if not any(m.children()):
            n = sum(p.numel() for p in m.parameters())
            hooks.append(m.register_forward_hook(
                lambda m, i, o, name=name, n=n:
                rows.append((f"{name} ({type(m).__name__})", _shape(o), f"{n:,}"))))
    was_training = model.training
    try:
        model.eval()  # batch of 1: BatchNorm in train mode would fail on 1×1 maps, Dropout would be random
        with torch.no_grad():
            model(torch.zeros(1, *in_shape, device=next(model.parameters(), torch.empty(0)).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    total, trainable = count_params(model)
    head = ("Layer (type)", "Output Shape", "Param #")
    widths = [max(len(r[i]) for r in [head, *rows]) + 3 for i in range(3)]
    line = lambda r: f"{r[0]:<{widths[0]}}{r[1]:<{widths[1]}}{r[2]:>{widths[2] - 3}}"  # noqa: E731
    rule = sum(widths) - 3
    return "\n".join([f'Model: "{type(model).__name__}"', "_" * rule, line(head), "=" * rule,
                      *map(line, rows), "=" * rule,
                      f"Total params: {total:,}", f"Trainable params: {trainable:,}",
                      f"Non-trainable params: {total - trainable:,}", "_" * rule])

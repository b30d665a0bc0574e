"""Optimizer factories beyond torch's defaults. Each takes the parameters (tensors, or groups with an "lr")
first, so configs stay `_partial_: true` leaves."""

from __future__ import annotations

import torch


def nesterov_sgd(params, lr: float, batch_size: int, momentum: float = 0.85, weight_decay: float = 0.0,
                 bias_lr_scale: float = 1.0, nesterov: bool = True) -> torch.optim.SGD:
    """Nesterov SGD in airbench's units: lr and weight_decay per 1024 examples, normalised by the momentum's
    gain 1/(1-momentum), so changing batch_size or momentum keeps the step per example; weight decay is
    decoupled (decay per step = weight_decay·batch/kilostep, whatever the lr, times the schedule's factor).
    Biases and norm shifts (1-D tensors) take bias_lr_scale × lr with the same decay per step.
    The loss is the batch mean, so torch's lr = lr·batch/kilostep (airbench sums the loss instead)."""
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    base = lr * batch_size / kilostep
    groups = []
    grouped = isinstance(params, list) and params and isinstance(params[0], dict)
    for g in params if grouped else [{"params": params}]:
        ps = [p for p in g["params"] if p.requires_grad]
        scale = g.get("lr", lr) / lr  # a group's own lr (discriminative lrs) as a ratio to the base lr
        for sel, s in ((lambda p: p.ndim > 1, scale), (lambda p: p.ndim <= 1, scale * bias_lr_scale)):
            group = [p for p in ps if sel(p)]
            if group:  # torch's coupled decay wd·lr_t per step: wd = weight_decay/(lr·s) keeps it lr-free
                groups.append({"params": group, "lr": base * s, "weight_decay": weight_decay / (lr * s)})
    return torch.optim.SGD(groups, lr=base, momentum=momentum, nesterov=nesterov)

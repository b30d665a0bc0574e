"""LR schedules, all stepped per optimizer step. Each is `f(optimizer, total_steps, steps_per_epoch, **cfg)`
so configs stay declarative (`_partial_: true`) and the step counts come from the trainer at run time. A run
extended on resume (a larger trainer.max_epochs) follows the longer run's schedule from the step it reached,
as timm's schedulers do: one laid out over the run's length (onecycle, cosine, triangle) jumps there."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from cnnlab.errors import UserError


class _OneCycle(OneCycleLR):
    """OneCycleLR laid out over the run it is built for, like the other schedules here: torch saves the
    layout (total_steps) in its state, so a run extended on resume (a larger trainer.max_epochs) would keep
    the shorter one's and fail past its end ("Tried to step 17 times")."""

    def load_state_dict(self, state_dict: dict) -> None:
        layout = {k: self.__dict__[k] for k in ("total_steps", "_schedule_phases")}
        super().load_state_dict(state_dict)
        self.__dict__.update(layout)


def onecycle(optimizer: Optimizer, total_steps: int, steps_per_epoch: int, pct_start: float = 0.25,
             div_factor: float = 25.0, final_div_factor: float = 1e4) -> LRScheduler:
    max_lr = [g["lr"] for g in optimizer.param_groups]  # the optimizer's lr is the peak
    if total_steps < 3:
        raise UserError(f"scheduler=onecycle needs at least 3 optimizer steps and this run has "
                        f"{total_steps}: train longer, or use scheduler=none")
    # torch divides by each phase's length in steps (pct_start·total_steps − 1, then the rest): a short run
    # (4 steps at 0.25) divided by 0; at least 1.5 steps up and 1 down. Runs of >= 6 steps are unchanged.
    pct_start = min(max(pct_start, 1.5 / total_steps), 1 - 1 / total_steps)
    return _OneCycle(optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct_start,
                     div_factor=div_factor, final_div_factor=final_div_factor)


def cosine(optimizer: Optimizer, total_steps: int, steps_per_epoch: int, warmup_epochs: float = 0.0,
           min_factor: float = 0.0) -> LRScheduler:
    warmup = int(warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total_steps - warmup)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return LambdaLR(optimizer, factor)


def step(optimizer: Optimizer, total_steps: int, steps_per_epoch: int, step_epochs: int = 10,
         gamma: float = 0.1) -> LRScheduler:
    return LambdaLR(optimizer, lambda s: gamma ** (s // (step_epochs * steps_per_epoch)))


def triangle(optimizer: Optimizer, total_steps: int, steps_per_epoch: int, start_factor: float = 0.2,
             peak_at: float = 0.23, end_factor: float = 0.07) -> LRScheduler:
    """Linear up from start_factor·lr to lr at peak_at of the run, then linear down to end_factor·lr
    (airbench: a short run spends most steps annealing)."""
    peak = max(1, int(peak_at * total_steps))

    def factor(s: int) -> float:
        if s < peak:
            return start_factor + (1 - start_factor) * s / peak
        return 1 + (end_factor - 1) * min(1.0, (s - peak) / max(1, total_steps - peak))

    return LambdaLR(optimizer, factor)

"""Weight averaging as a Lightning callback, usable with any model: an EMA of the network's float state
(weights and BN statistics) updated every `every` steps, either kept aside (mode=ema: validation and
checkpoints use it, so `cnnlab evaluate` does too) or written back into the net (mode=lookahead, airbench: the
net restarts from the average, and the last step leaves the net equal to it)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from cnnlab.errors import UserError


class WeightAveraging(pl.Callback):
    """decay per step; the effective decay ramps up as (step/total)^warmup_power, so early (bad) weights are
    forgotten: airbench94 uses decay 0.95, every 5, power 3."""

    def __init__(self, mode: str = "ema", every: int = 5, decay: float = 0.95, warmup_power: float = 3.0):
        if mode not in ("ema", "lookahead"):
            raise UserError(f"train.average.mode must be ema, lookahead or null, not {mode!r}")
        self.mode, self.every, self.decay, self.power = mode, every, decay, warmup_power
        self.avg: dict[str, torch.Tensor] | None = None
        self._raw: dict[str, torch.Tensor] | None = None  # the raw weights of a checkpoint being resumed

    @staticmethod
    def _state(pl_module) -> dict[str, torch.Tensor]:  # shares storage with the net: copy_ writes into it
        return {k: v for k, v in pl_module.net.state_dict().items() if v.is_floating_point()}

    def on_fit_start(self, trainer, pl_module) -> None:
        state = self._state(pl_module)
        # resumed: the checkpoint's state_dict holds the average, ours the raw weights
        if self._raw is not None:
            for k, v in state.items():
                v.copy_(self._raw[k])
        self.avg = ({k: v.to(state[k].device) for k, v in self.avg.items()} if self.avg is not None
                    else {k: v.detach().clone() for k, v in state.items()})

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, total = trainer.global_step, max(1, int(trainer.estimated_stepping_batches))
        last = step >= total
        if step % self.every and not last:
            return
        d = self.decay ** self.every * min(1.0, step / total) ** self.power
        for k, v in self._state(pl_module).items():
            self.avg[k].lerp_(v, 1 - d)
            if self.mode == "lookahead":
                v.copy_(self.avg[k])

    def _swap(self, pl_module) -> None:
        for k, v in self._state(pl_module).items():
            tmp = v.clone()
            v.copy_(self.avg[k])
            self.avg[k].copy_(tmp)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self.mode == "ema" and self.avg is not None and trainer.training:
            self._swap(pl_module)  # validate (and pick best.ckpt by) the average

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self.mode == "ema" and self.avg is not None and trainer.training:
            self._swap(pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.mode == "ema" and self.avg is not None:  # what evaluate/predict load is the average
            self._swap(pl_module)
            checkpoint["state_dict"] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            self._swap(pl_module)

    def state_dict(self) -> dict:
        module = getattr(self, "_module", None)
        raw = {k: v.detach().clone() for k, v in self._state(module).items()} if module is not None else None
        return {"avg": self.avg, "raw": raw}

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._module = pl_module  # for state_dict, which gets no pl_module

    def load_state_dict(self, state_dict: dict) -> None:
        self.avg, self._raw = state_dict["avg"], state_dict.get("raw")

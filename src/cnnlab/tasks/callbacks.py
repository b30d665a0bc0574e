"""Callbacks shared by every training run."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BaseFinetuning

from cnnlab.io import write_csv

log = logging.getLogger(__name__)


class EpochHistory(pl.Callback):
    """Per-epoch metrics → an atomically rewritten CSV (for `dvc plots` and the report), and one plain log line
    per epoch when there is no progress bar (CI, DVC). Its rows live in the checkpoint, so a resumed run
    continues the same history."""

    def __init__(self, path: str | Path, print_lines: bool):
        self.path, self.print_lines = Path(path), print_lines
        self.rows: list[dict] = []
        self._t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        m = {k: round(float(v), 6) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
        lrs = [g["lr"] for opt in trainer.optimizers for g in opt.param_groups]
        row = {"epoch": trainer.current_epoch, **dict(sorted(m.items())), "lr": lrs[0] if lrs else None,
               "time_s": round(time.perf_counter() - self._t0, 3)}
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
        if trainer.is_global_zero:
            write_csv(self.rows, self.path)
            if self.print_lines:
                log.info("epoch %d/%d  %s", row["epoch"] + 1, trainer.max_epochs,
                         "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch" and v is not None))

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = list(state_dict["rows"])


class GradualUnfreeze(BaseFinetuning):
    """Transfer learning in phases: the head first, then one backbone stage more (from the top) every
    `net.unfreeze_every` epochs, each joining the optimizer at the backbone's lower learning rate."""

    def freeze_before_training(self, pl_module) -> None:
        self.freeze(pl_module.net.body, train_bn=False)  # frozen means frozen, BatchNorm included

    def finetune_function(self, pl_module, current_epoch: int, optimizer) -> None:
        net = pl_module.net
        if current_epoch == 0 or current_epoch % net.unfreeze_every:
            return
        stages = net.stages()
        k = current_epoch // net.unfreeze_every - 1
        if k < len(stages):
            lr = optimizer.param_groups[0]["lr"]
            self.unfreeze_and_add_param_group(stages[k], optimizer, lr=lr * net.backbone_lr_scale,
                                              train_bn=not net.freeze_bn)
            log.info("epoch %d: unfroze backbone stage %d/%d", current_epoch, k + 1, len(stages))

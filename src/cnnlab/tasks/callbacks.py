"""The callbacks of a training run, built from config in one place (`from_config`). Epochs count from 1 in
everything a person reads: history.csv, the log line, the progress bar and MLflow's per-epoch steps."""

from __future__ import annotations

import csv
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.callbacks import BaseFinetuning, EarlyStopping, ModelCheckpoint, RichProgressBar
from pytorch_lightning.utilities.exceptions import SIGTERMException

from cnnlab import study
from cnnlab.io import write_csv
from cnnlab.paths import RunDir
from cnnlab.tasks.ema import WeightAveraging

log = logging.getLogger(__name__)


def from_config(cfg: DictConfig, stage: RunDir, tty: bool) -> list[pl.Callback]:
    """The callbacks a `train` run asks for; history and checkpoints go to `stage` (the run's .partial/)."""
    t, net = cfg.train, cfg.model.net
    callbacks: list[pl.Callback] = [
        EpochHistory(stage.train / "history.csv", print_lines=not tty),
        # saved at train-epoch end, after validation and after EpochHistory, so the history rides along
        BestAndLast(dirpath=stage.model, filename="best", monitor=t.monitor, mode=t.monitor_mode,
                    save_last=True, save_on_train_epoch_end=True, enable_version_counter=False),
    ]
    if tty:
        callbacks.append(EpochProgressBar())
    if net.get("mode") == "gradual":  # TransferNet's phases; their settings sit beside it in model.net
        callbacks.append(GradualUnfreeze(net.unfreeze_every, net.backbone_lr_scale,
                                         train_bn=not net.freeze_bn))
    if (a := t.average).mode:
        callbacks.append(WeightAveraging(a.mode, a.every, a.decay, a.warmup_power))
    if t.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor=t.monitor, mode=t.monitor_mode,
                                       patience=t.early_stopping_patience))
    if (trial := study.current_trial()) is not None:  # a job of an Optuna sweep
        callbacks.append(OptunaPruning(study.TrialReporter(trial), t.monitor))
    return callbacks


class BestAndLast(ModelCheckpoint):
    """best.ckpt when the monitored value improves, last.ckpt after every epoch. Lightning 2.6 writes
    last.ckpt only in epochs that improved best.ckpt, so `resume=true` after a finished run retrained from
    the last improvement."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer):  # nothing saved at this step: no improvement
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def load_state_dict(self, state_dict: dict) -> None:
        """A run folder copied or moved elsewhere keeps its best score: Lightning drops it when the folder
        changed, and the first resumed epoch, however bad, replaced best.ckpt. Its paths are mapped to here,
        so nothing in the original folder is ever removed."""
        here = lambda p: str(Path(self.dirpath) / Path(p).name) if p else p  # noqa: E731
        super().load_state_dict({
            **state_dict, "dirpath": self.dirpath, "best_model_path": here(state_dict["best_model_path"]),
            "kth_best_model_path": here(state_dict.get("kth_best_model_path", "")),
            "last_model_path": here(state_dict.get("last_model_path", "")),
            "best_k_models": {here(k): v for k, v in state_dict.get("best_k_models", {}).items()}})


class Interrupted(SIGTERMException):
    """Training stopped by SIGTERM or SIGINT (`signum`), at a point where nothing is half-written."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


class StopOnSignal(pl.Callback):
    """While a run is open (`with`), SIGTERM and SIGINT are recorded, not obeyed at once: training stops at
    the next batch, where no checkpoint or history is half-written (Lightning does so for SIGTERM, then exits
    0; Ctrl+C raised anywhere, a checkpoint cut off mid-write included, and exited 1). `now` makes a signal
    stop at once (MLflow logging: nothing local is written). A second signal kills the process outright."""

    def __init__(self):
        self.signum: int | None = None
        self.now = False
        self._before: dict[int, object] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # Python runs handlers there only
            self._before = {s: signal.signal(s, self._on) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._before.items():
            signal.signal(s, handler)

    def _on(self, signum: int, frame) -> None:
        if self.signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.signum = signum
        if self.now:
            raise Interrupted(signum)

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.check()


class OptunaPruning(pl.Callback):
    """Reports the monitored metric to the sweep's Optuna trial after every validation (step = epoch, from 1)
    and stops the run when the study's pruner rejects the trial. Rank 0 decides and every rank stops with it
    (ddp_spawn): a rank stopping alone would hang the others in their next collective."""

    def __init__(self, reporter: study.TrialReporter, monitor: str):
        self.reporter, self.monitor = reporter, monitor

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune = False
        if trainer.is_global_zero and (value := trainer.callback_metrics.get(self.monitor)) is not None:
            epoch = trainer.current_epoch + 1
            if prune := self.reporter.report(float(value), epoch):
                log.info("trial pruned after epoch %d (%s %.4f)", epoch, self.monitor, float(value))
        if trainer.strategy.broadcast(prune, src=0):
            trainer.should_stop = True


class EpochHistory(pl.Callback):
    """Per-epoch metrics → an atomically rewritten CSV (for `dvc plots` and the report), the loggers (MLflow,
    at step = epoch), and one plain log line per epoch when there is no progress bar (CI, DVC). Its rows live
    in the checkpoint, so a resumed run continues the same history."""

    def __init__(self, path: str | Path, print_lines: bool):
        self.path, self.print_lines = Path(path), print_lines
        self.rows: list[dict] = []
        self._t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        m = {k: round(float(v), 6) for k, v in trainer.callback_metrics.items()
             if k.startswith(("train/", "val/"))}
        lrs = [g["lr"] for opt in trainer.optimizers for g in opt.param_groups]
        row = {"epoch": trainer.current_epoch + 1, **dict(sorted(m.items())), "lr": lrs[0] if lrs else None,
               "time_s": round(time.perf_counter() - self._t0, 3)}
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
        if trainer.is_global_zero:
            write_csv(self.rows, self.path)
            values = {k: v for k, v in row.items() if k != "epoch" and v is not None}
            for logger in trainer.loggers:  # a resumed epoch logged before a kill is logged again, same step
                logger.log_metrics(values, step=row["epoch"])
            if self.print_lines:
                log.info("epoch %d/%d  %s", row["epoch"], trainer.max_epochs,
                         "  ".join(f"{k} {v:.4g}" for k, v in values.items()))

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict) -> None:
        rows = [dict(r) for r in state_dict["rows"]]
        if rows and rows[0]["epoch"] == 0:  # a checkpoint from when epochs counted from 0: renumbered
            for r in rows:
                r["epoch"] += 1
        self.rows = rows


def read_history(path: str | Path) -> list[dict]:
    """history.csv → one dict per epoch: `epoch` an int (from 1), the other columns floats, None where
    empty."""
    with open(path, newline="") as f:
        return [{k: None if v in ("", None) else int(v) if k == "epoch" else float(v) for k, v in r.items()}
                for r in csv.DictReader(f)]


class EpochProgressBar(RichProgressBar):
    """Lightning's Rich bar, with epochs counted from 1 like the rest ("Epoch 1/10", not "Epoch 0/9")."""

    def _get_train_description(self, current_epoch: int) -> str:
        last = self.trainer.max_epochs
        text = f"Epoch {current_epoch + 1}" + (f"/{last}" if last is not None and last >= 0 else "")
        return f"{text:{len(self.validation_description)}}"  # padded as Lightning's: the bars do not flicker

    def get_metrics(self, trainer, pl_module) -> dict:
        # Lightning adds the logger's version as `v_num`: for MLflow a run-id prefix, which tells a reader
        # nothing
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class GradualUnfreeze(BaseFinetuning):
    """Transfer learning in phases: the head first, then one more of the network's `stages()` (from the top)
    every `unfreeze_every` epochs, each joining the optimizer at lr_scale × the current learning rate."""

    def __init__(self, unfreeze_every: int, lr_scale: float, train_bn: bool):
        super().__init__()
        self.unfreeze_every, self.lr_scale, self.train_bn = unfreeze_every, lr_scale, train_bn

    def freeze_before_training(self, pl_module) -> None:
        # the parts come from the network's contract (cnnlab.models.Network.stages), so this callback is built
        # from config alone, before and apart from the model
        self.freeze(pl_module.net.stages(), train_bn=False)  # frozen means frozen, BatchNorm included

    def finetune_function(self, pl_module, current_epoch: int, optimizer) -> None:
        if current_epoch == 0 or current_epoch % self.unfreeze_every:
            return
        stages = pl_module.net.stages()
        k = current_epoch // self.unfreeze_every - 1
        if k < len(stages):
            lr = optimizer.param_groups[0]["lr"]
            self.unfreeze_and_add_param_group(stages[k], optimizer, lr=lr * self.lr_scale,
                                              train_bn=self.train_bn)
            log.info("epoch %d: unfroze backbone stage %d/%d", current_epoch + 1, k + 1, len(stages))

"""Stage `train`: prepared data + model/optimizer/scheduler/trainer config → checkpoints, history, one MLflow run.

Outputs (rank 0): models/<run>/{best,last}.ckpt, run.json (provenance: MLflow run id, git, data hash) and
config.yaml; reports/<run>/train/{metrics.json,history.csv}. Returns the best monitored value (for sweepers).
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, RichProgressBar

from cnnlab import sweep, tracking
from cnnlab.data.loader import PreparedData
from cnnlab.data.prepared import load_manifest, load_split, manifest_hash
from cnnlab.errors import UserError
from cnnlab.io import write_json, write_text
from cnnlab.tasks.callbacks import EpochHistory, GradualUnfreeze
from cnnlab.tasks.classifier import Classifier, InferenceNet
from cnnlab.tasks.ema import WeightAveraging

log = logging.getLogger(__name__)
# Lightning chatter that asks nothing of a cnnlab user (we log per epoch, override on_after_batch_transfer on
# purpose, and reuse the checkpoint folder by design) and its advertising tip.
warnings.filterwarnings("ignore", message=r".*(LeafSpec|log_every_n_steps|on_after_batch_transfer|exists and is not empty|module\(s\) in eval mode).*")
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(lambda r: "💡" not in r.getMessage())


def run_dirs(cfg: DictConfig) -> tuple[Path, Path]:
    """(models/<run>, reports/<run>): where a run's checkpoints and its reports live."""
    return Path(cfg.paths.models_dir) / cfg.run_name, Path(cfg.paths.reports_dir) / cfg.run_name


def _best_from_history(path: Path, monitor: str, mode: str) -> float:
    import csv

    with open(path) as f:
        values = [float(r[monitor]) for r in csv.DictReader(f) if r.get(monitor)]
    return (max if mode == "max" else min)(values) if values else float("nan")


def run(cfg: DictConfig) -> float:
    t0 = time.perf_counter()
    if sweep.sweep_dir() is not None:
        if cfg.trainer.strategy == "ddp" and cfg.trainer.devices != 1:
            raise UserError("strategy=ddp inside a multirun re-launches the whole sweep in every process (a "
                            "Lightning + Hydra limitation): use trainer.strategy=ddp_spawn, or one launcher job "
                            "per GPU set (hydra/launcher=slurm)")
        cfg = cfg.copy()
        cfg.run_name = sweep.job_run_name(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data_dir = Path(cfg.paths.prepared_dir) / cfg.data.name
    manifest = load_manifest(data_dir)
    model_dir, report_dir = run_dirs(cfg)
    state = json.loads((model_dir / "run.json").read_text()) if (model_dir / "run.json").is_file() else {}
    ckpt_path = None
    if cfg.resume:
        if not (model_dir / "last.ckpt").is_file():
            raise UserError(f"resume=true but there is no {model_dir / 'last.ckpt'} (train without resume first)")
        ckpt_path = str(model_dir / "last.ckpt")
    t = cfg.train
    model = Classifier(
        net=OmegaConf.to_container(cfg.model.net, resolve=True), in_shape=tuple(manifest["image_shape"]),
        num_classes=manifest["num_classes"], class_names=manifest["classes"], mean=manifest["mean"],
        std=manifest["std"], optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.scheduler else None, label_smoothing=t.label_smoothing,
        crop_padding=t.augment.crop_padding, flip=t.augment.flip,
        alternate_flip=t.augment.get("alternate_flip", False), cutout=t.augment.cutout,
        channels_last=t.channels_last, compile=t.compile, seed=cfg.seed)
    data = PreparedData(str(data_dir), t.batch_size, t.eval_batch_size, seed=cfg.seed, drop_last=t.drop_last,
                        per_class=t.per_class, subset_seed=t.subset_seed)

    mlflow_logger = tracking.make_logger(cfg, cfg.run_name, run_id=state.get("mlflow_run_id") if cfg.resume else None,
                                         parent_run_id=sweep.parent_run_id())
    tty = sys.stdout.isatty()
    callbacks = [
        EpochHistory(report_dir / "train/history.csv", print_lines=not tty),
        # saved at train-epoch end, after validation and after EpochHistory, so the history rides along
        ModelCheckpoint(dirpath=model_dir, filename="best", monitor=t.monitor, mode=t.monitor_mode,
                        save_last=True, save_on_train_epoch_end=True, enable_version_counter=False),
    ]
    if tty:
        callbacks.append(RichProgressBar())
    if cfg.model.net.get("mode") == "gradual":
        callbacks.append(GradualUnfreeze())
    if t.get("average") and t.average.mode:
        callbacks.append(WeightAveraging(t.average.mode, t.average.every, t.average.decay, t.average.warmup_power))
    if t.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor=t.monitor, mode=t.monitor_mode, patience=t.early_stopping_patience))
    if mlflow_logger:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    # plain containers: Lightning type-checks some values (max_time as a dict, devices as a list)
    trainer = pl.Trainer(**OmegaConf.to_container(cfg.trainer, resolve=True), deterministic=cfg.deterministic,
                         logger=mlflow_logger or False,
                         callbacks=callbacks, enable_progress_bar=tty, enable_model_summary=False,
                         default_root_dir=str(model_dir))

    if trainer.is_global_zero:  # side effects on rank 0 only
        state = {"run_name": cfg.run_name, "data_dir": str(data_dir), "data_hash": manifest_hash(data_dir),
                 **tracking.git_state()}
        if mlflow_logger:
            state["mlflow_run_id"] = mlflow_logger.run_id  # creates the run (or reopens it on resume)
            mlflow_logger.log_hyperparams({k: v for k, v in tracking.flatten(cfg).items() if k != "resume"})
            mlflow_logger.set_tags({"data_hash": state["data_hash"], **state})
        write_json(model_dir / "run.json", state)
        write_text(model_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        if mlflow_logger:
            mlflow_logger.log_artifact(model_dir / "config.yaml")

    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)

    ckpt = trainer.checkpoint_callback
    best = float(ckpt.best_model_score) if ckpt.best_model_score is not None else _best_from_history(
        report_dir / "train/history.csv", t.monitor, t.monitor_mode)  # ddp_spawn does not send the score back
    if trainer.is_global_zero:
        metrics = {f"best_{t.monitor}": best, "epochs": trainer.current_epoch,
                   "global_steps": trainer.global_step, "time_s": round(time.perf_counter() - t0, 2),
                   "world_size": trainer.world_size}
        write_json(report_dir / "train/metrics.json", metrics)
        if mlflow_logger:
            mlflow_logger.log_artifact(ckpt.best_model_path, "checkpoints")
            mlflow_logger.log_artifact(report_dir / "train/history.csv")
            best_model = Classifier.load_from_checkpoint(ckpt.best_model_path, map_location="cpu", weights_only=True)
            example = load_split(data_dir, "val").images[:2].float().div(255).numpy()
            tracking.log_model(mlflow_logger, InferenceNet(best_model.net, manifest["mean"], manifest["std"]).eval(),
                               example)
        log.info("best %s %.4f → %s (%.1f s)", t.monitor, best, ckpt.best_model_path, metrics["time_s"])
    return best

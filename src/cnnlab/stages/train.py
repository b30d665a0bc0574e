"""Stage `train`: prepared data + model/optimizer/scheduler/trainer config → checkpoints, history, one MLflow
run.

Outputs (rank 0), in out_dir: model/{best,last}.ckpt, run.json (provenance: MLflow run id, git, DVC
experiment, data hash) and config.yaml; train/{metrics.json,history.csv}. The run trains in out_dir/.partial/
and replaces model/ and train/ only when it succeeds, so a failed or refused run leaves an existing run as it
was. Returns the best monitored value (for sweepers).
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from cnnlab import sweep, tracking
from cnnlab.data.loader import PreparedData
from cnnlab.data.prepared import load_manifest, load_split, manifest_hash
from cnnlab.errors import UserError
from cnnlab.io import locked, no_space, replace_dirs, write_json, write_text
from cnnlab.paths import MARKER, RunDir, data_dir, latest_run, provenance, run_dir
from cnnlab.tasks import callbacks
from cnnlab.tasks.checkpoint import check_checkpoint
from cnnlab.tasks.classifier import Classifier
from cnnlab.tasks.logger import SafeMLFlowLogger, log_model, make_logger

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float:
    """Compose the model, data, logger and callbacks from cfg → fit → record the run. Returns the best
    monitored value."""
    t0 = time.perf_counter()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = data_dir(cfg)
    manifest = load_manifest(data)
    run, t = run_dir(cfg), cfg.train
    rank0 = rank_zero_only.rank == 0
    busy = (f"out_dir={run.root} is in use by another `cnnlab train` (it holds {run.root / MARKER}'s lock): "
            "wait for it to finish, or train into another out_dir=")
    with locked(run.root / MARKER, busy) if rank0 else contextlib.nullcontext(), \
            callbacks.StopOnSignal() as stop:
        stage, mlflow_logger, swapped = RunDir(run.root / ".partial"), None, False
        try:
            stage = _staging(cfg, run)
            resumed = provenance(stage.model) if cfg.resume else {}
            if resumed.get("out_dir") != str(run.root.resolve()):  # a copied run folder: a run of its own
                resumed.pop("mlflow_run_id", None)
            model = Classifier.from_config(cfg, manifest)
            batches = PreparedData.from_config(t, str(data), cfg.seed)
            mlflow_logger = make_logger(cfg, run_id=resumed.get("mlflow_run_id"),
                                        parent_run_id=sweep.parent_run_id())
            tty = sys.stdout.isatty()
            # plain containers: Lightning type-checks some values (max_time as a dict, devices as a list)
            trainer = pl.Trainer(**OmegaConf.to_container(cfg.trainer, resolve=True),
                                 deterministic=cfg.deterministic, logger=mlflow_logger or False,
                                 callbacks=[*callbacks.from_config(cfg, stage, tty), stop],
                                 enable_progress_bar=tty, enable_model_summary=False,
                                 default_root_dir=str(stage.root))
            if trainer.is_global_zero:  # side effects on rank 0 only
                _provenance(cfg, stage, data, mlflow_logger)
            stop.check()
            trainer.fit(model, datamodule=batches, ckpt_path=str(stage.last) if cfg.resume else None)
            stop.check()  # a signal during the last epoch's end: the run is not published

            ckpt = trainer.checkpoint_callback
            best = float(ckpt.best_model_score) if ckpt.best_model_score is not None else _best_from_history(
                stage, t.monitor, t.monitor_mode)  # ddp_spawn does not send the score back
            if trainer.is_global_zero:
                metrics = {f"best_{t.monitor}": best, "epochs": trainer.current_epoch,
                           "global_steps": trainer.global_step, "time_s": round(time.perf_counter() - t0, 2),
                           "world_size": trainer.world_size}
                write_json(stage.train / "metrics.json", metrics)
                # the run succeeded: it replaces the folder's model and history; an older evaluation no longer
                # applies
                replace_dirs({stage.model: run.model, stage.train: run.train}, remove=[run.eval])
                shutil.rmtree(stage.root, ignore_errors=True)
                swapped = True
                if mlflow_logger:
                    stop.now = True  # only MLflow is written now: a signal stops it at once
                    _log_outputs(mlflow_logger, run, data)
                log.info("best %s %.4f → %s (%.1f s)", t.monitor, best, run.best, metrics["time_s"])
            return best
        except SIGTERMException as e:  # ours (callbacks.Interrupted) or Lightning's, which says no signal
            signum = stop.signum or signal.SIGTERM
            _stopped(signum, run, stage, swapped, mlflow_logger)
            raise SystemExit(128 + signum) from e  # what a shell reports for a process the signal killed
        except BaseException as e:
            _failed(e, stage, mlflow_logger)
            raise


def _stopped(signum: int, run: RunDir, stage: RunDir, swapped: bool,
             mlflow_logger: SafeMLFlowLogger | None) -> None:
    """A signal stopped the run: its MLflow run is marked KILLED, `.partial/` is kept when it holds a
    checkpoint to continue from, and one line says how."""
    if mlflow_logger:
        mlflow_logger.finalize("KILLED")
    name = signal.Signals(signum).name
    if swapped or stage.last.is_file():
        args = [a for a in sys.argv[1:] if not a.startswith(("resume=", "out_dir="))]
        command = shlex.join(["cnnlab", *args, "resume=true", f"out_dir={run.root}"])
        what = "the run is complete, its MLflow logging is not" if swapped else "the checkpoint is kept"
        line = f"stopped by {name} ({what}); continue it with: {command}"
    else:
        shutil.rmtree(stage.root, ignore_errors=True)
        line = f"stopped by {name} before the first checkpoint: nothing to resume"
    print(f"cnnlab train: {line}", file=sys.stderr, flush=True)


def _failed(e: BaseException, stage: RunDir, mlflow_logger: SafeMLFlowLogger | None) -> None:
    """A failed run: its MLflow run is marked FAILED and `.partial/` goes, unless it holds a checkpoint to
    resume from (a blow-up after good epochs says it kept one). A full disk is one line, and nothing of the
    run is left on it."""
    if mlflow_logger:
        mlflow_logger.finalize("failed")
    full = no_space(e, stage.root)
    if full or not stage.last.is_file():
        shutil.rmtree(stage.root, ignore_errors=True)
    if full:
        raise full from None


def _staging(cfg: DictConfig, run: RunDir) -> RunDir:
    """Where this run trains: out_dir/.partial/, a fresh one, or on resume the unfinished one (or a copy of
    the finished run, to train it further). Everything a resume could refuse is checked before anything is
    written. Rank 0 prepares it before the other ranks can read it."""
    stage = RunDir(run.root / ".partial")
    if rank_zero_only.rank != 0:
        return stage
    if not cfg.resume:
        shutil.rmtree(stage.root, ignore_errors=True)
        return stage
    source = stage if stage.last.is_file() else run  # the unfinished run, else the finished one
    if not source.last.is_file():
        hint = latest_run(cfg)
        raise UserError(f"resume=true but there is no {run.last}: pass out_dir=<the run folder to "
                        "continue>" + (f" (the latest is {hint})" if hint else ""))
    check_checkpoint(source.last)  # a corrupt last.ckpt: one line and the way out, not a traceback
    if source.config.is_file():  # a resumed run must be the same experiment, or its checkpoint lies about it
        saved = OmegaConf.to_container(OmegaConf.load(source.config))
        now = OmegaConf.to_container(cfg, resolve=True)
        for key in ("data", "model"):
            if saved.get(key) != now[key]:
                raise UserError(f"resume=true: {key} differs from the run's ({source.config}); resume with "
                                "the same settings, or train a new run without resume=true")
        epochs = (saved["trainer"]["max_epochs"], now["trainer"]["max_epochs"])
        if epochs[0] != epochs[1] and now.get("scheduler"):  # see cnnlab.tasks.schedules
            log.warning("resume=true with trainer.max_epochs %s → %s: the lr follows the %s-epoch schedule "
                        "from the step reached", *epochs, epochs[1])
    if source is run:  # on a copy: the run stays as it was until the resumed one succeeds
        shutil.rmtree(stage.root, ignore_errors=True)
        for d in (run.model, run.train):
            if d.is_dir():  # file by file: a full disk is an OSError that names the file, not a shutil.Error
                stage_dir = stage.root / d.name
                stage_dir.mkdir(parents=True)
                for f in d.iterdir():
                    shutil.copy2(f, stage_dir / f.name)
    return stage


def _best_from_history(stage: RunDir, monitor: str, mode: str) -> float:
    rows = callbacks.read_history(stage.train / "history.csv")
    values = [r[monitor] for r in rows if r.get(monitor) is not None]
    return (max if mode == "max" else min)(values) if values else float("nan")


def _provenance(cfg: DictConfig, stage: RunDir, data: Path, mlflow_logger: SafeMLFlowLogger | None) -> None:
    """run.json (MLflow run id, git, DVC experiment, data hash) and the resolved config, beside the
    checkpoints."""
    state = {"run_name": cfg.run_name, "data_dir": str(data), "data_hash": manifest_hash(data),
             **tracking.run_tags(cfg)}
    if mlflow_logger:
        state["mlflow_run_id"] = mlflow_logger.run_id  # creates the run (or reopens it on resume)
        mlflow_logger.log_hyperparams({k: v for k, v in tracking.flatten(cfg).items() if k != "resume"})
        mlflow_logger.set_tags({"data_hash": state["data_hash"]})
    write_json(stage.run_json, state)
    write_text(stage.config, OmegaConf.to_yaml(cfg, resolve=True))


def _log_outputs(mlflow_logger: SafeMLFlowLogger, run: RunDir, data: Path) -> None:
    """The finished run's config, best checkpoint, history and an MLflow model (float [0, 1] images →
    logits)."""
    for f, sub in ((run.config, None), (run.best, "checkpoints"), (run.train / "history.csv", None)):
        mlflow_logger.log_artifact(f, sub)
    example = load_split(data, "val").images[:2].float().div(255).numpy()
    model = Classifier.load(run.best)
    log_model(mlflow_logger, model.inference_net().eval(), example,
              {"classes": list(model.hparams.class_names), "in_shape": list(model.hparams.in_shape),
               "input": "float32 [B,C,H,W] in [0, 1], RGB", "output": "logits"}, run.best)

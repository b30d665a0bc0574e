"""Lightning's MLflow logger, made safe: a store that fails mid-run is warned about once and the run goes
on."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from omegaconf import DictConfig
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities import rank_zero_only

from cnnlab import tracking

log = logging.getLogger(__name__)
# Where log_model puts the run's checkpoint in the logged model (MLflow's extra_files keep the file's name)
REGISTERED_CHECKPOINT = "extra_files/best.ckpt"


class SafeMLFlowLogger(MLFlowLogger):
    """Lightning's MLflow logger that warns once and stops logging if the store fails mid-run."""

    failed: str | None = None

    def _guard(self, what: str, fn, *args, **kwargs) -> None:
        if self.failed:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:  # MlflowException, requests/urllib errors, sqlite errors: the run goes on
            self.failed = f"{type(e).__name__}: {e}"
            log.warning("MLflow: %s not logged, and nothing more will be (%s); local files are complete",
                        what, self.failed)

    def log_metrics(self, metrics, step=None) -> None:
        self._guard("metrics", super().log_metrics, metrics, step)

    def log_hyperparams(self, params: dict) -> None:
        self._guard("params", self._log_params, params)

    def _log_params(self, params: dict) -> None:
        """A reopened run (resume=true, e.g. with a larger trainer.max_epochs) keeps the params it started
        with, as MLflow refuses to change one: a value changed since is the tag `resumed_with.<key>`."""
        from mlflow.entities import RunTag

        logged = self.experiment.get_run(self.run_id).data.params
        changed = {k: str(v)[:250] for k, v in params.items()  # [:250]: as Lightning's logger stores them
                   if k in logged and logged[k] != str(v)[:250]}
        super().log_hyperparams({k: v for k, v in params.items() if k not in changed})
        if changed:
            self.experiment.log_batch(self.run_id, tags=[RunTag(f"resumed_with.{k}", v)
                                                         for k, v in changed.items()])

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        self._guard(f"artifact {path}", lambda: self.experiment.log_artifact(self.run_id, str(path), subdir))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._guard("tags", lambda: [self.experiment.set_tag(self.run_id, k, v) for k, v in tags.items()])

    def finalize(self, status: str = "success") -> None:
        self._guard("run status", super().finalize, status)


def make_logger(cfg: DictConfig, run_id: str | None = None, parent_run_id: str | None = None,
                tags: dict[str, str] | None = None) -> SafeMLFlowLogger | None:
    """The Lightning logger for a training run (its MLflow run is created lazily, on rank 0 only)."""
    if (uri := tracking.usable_uri(cfg)) is None:
        return None
    if rank_zero_only.rank == 0:
        tracking.experiment_id(cfg, uri)  # created here, with cnnlab's artifact location
    return SafeMLFlowLogger(
        experiment_name=cfg.tracking.experiment, run_name=tracking.run_name(cfg.run_name), tracking_uri=uri,
        run_id=run_id, tags={"dataset": cfg.data.name, "model": cfg.model.name, **(tags or {}),
                             **tracking.run_tags(cfg),
                             **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})})


def log_model(logger: SafeMLFlowLogger, net, example, metadata: dict, checkpoint: Path) -> None:
    """`mlflow.pytorch.log_model` into the training run, with an input example (so a signature), what a
    user of the model needs to know (`metadata`: classes, input shape) and the run's `checkpoint` (its
    best.ckpt), which is what cnnlab loads of a registered model: data, where the logged model is code."""
    import mlflow
    import torch

    # named as its run (the MLflow UI lists logged models by name: "model" for all of them told none apart);
    # a run name holds / and : (sweep jobs, DVC experiments), which a model name may not
    name = re.sub(r"[^\w.-]+", "-", logger._run_name or "model")

    def _log() -> None:
        mlflow.set_tracking_uri(logger._tracking_uri)
        with mlflow.start_run(run_id=logger.run_id):
            # explicit requirements: MLflow's inference would import-trace the model in a subprocess (slow)
            mlflow.pytorch.log_model(net, name=name, input_example=example, metadata=metadata,
                                     extra_files=[str(checkpoint)],
                                     pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])

    logger._guard("model", _log)

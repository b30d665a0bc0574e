"""MLflow, in one place. Only global rank 0 talks to MLflow; a store that cannot be reached never stops a run:
a warning says what was not logged, and the local files under paths.* keep everything."""

from __future__ import annotations

import logging
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import MLFlowLogger

log = logging.getLogger(__name__)

# MLflow's HTTP defaults (7 retries with exponential backoff, 120 s timeout) would stall a run for minutes
# when the server goes away; keep it bounded unless the user set these themselves.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")


def tracking_uri(cfg: DictConfig) -> str:
    """cfg.tracking.uri, else a SQLite store at an absolute path (MLflow ≥3.13 refuses the ./mlruns file store)."""
    # timeout: parallel sweep jobs share the SQLite file; wait for its lock instead of failing "database is locked"
    return cfg.tracking.uri or f"sqlite:///{Path(cfg.paths.mlflow_db).resolve()}?timeout=60"


def unreachable(uri: str, timeout: float = 3.0) -> str | None:
    """Why an HTTP tracking server cannot be used now, or None (local stores are always reachable)."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as r:
            return None if r.status == 200 else f"HTTP {r.status}"
    except OSError as e:
        return str(getattr(e, "reason", e))


def git_state() -> dict[str, str]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        return {"git_sha": sha or "unknown", "git_dirty": str(bool(git("status", "--porcelain", "-uno")))}
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": "unknown", "git_dirty": "unknown"}


def flatten(cfg: DictConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


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

    def log_hyperparams(self, params) -> None:
        self._guard("params", super().log_hyperparams, params)

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        self._guard(f"artifact {path}", lambda: self.experiment.log_artifact(self.run_id, str(path), subdir))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._guard("tags", lambda: [self.experiment.set_tag(self.run_id, k, v) for k, v in tags.items()])

    def finalize(self, status: str = "success") -> None:
        self._guard("run status", super().finalize, status)


def usable_uri(cfg: DictConfig) -> str | None:
    """The tracking URI when tracking is on and the store answers; None (with a warning) otherwise."""
    if not cfg.tracking.enabled:
        return None
    uri = tracking_uri(cfg)
    if why := unreachable(uri):
        log.warning("MLflow server %s unreachable (%s): this run is not tracked; local files are complete", uri, why)
        return None
    return uri


def _artifact_location(cfg: DictConfig, uri: str) -> str | None:
    local = not uri.startswith(("http://", "https://"))  # a server decides where its artifacts go
    return Path(cfg.paths.mlflow_artifacts).resolve().as_uri() if local else None


def make_logger(cfg: DictConfig, run_name: str, run_id: str | None = None,
                parent_run_id: str | None = None) -> SafeMLFlowLogger | None:
    """The Lightning logger for a training run (its MLflow run is created lazily, on rank 0 only)."""
    if (uri := usable_uri(cfg)) is None:
        return None
    return SafeMLFlowLogger(
        experiment_name=cfg.tracking.experiment, run_name=run_name, tracking_uri=uri, run_id=run_id,
        tags={"dataset": cfg.data.name, "model": cfg.model.name, "recipe": cfg.get("recipe") or "default",
              **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})},
        artifact_location=_artifact_location(cfg, uri))


def log_model(logger: SafeMLFlowLogger, net, example) -> None:
    """`mlflow.pytorch.log_model` into the training run, with an input example (so a signature)."""
    import mlflow
    import torch

    def _log() -> None:
        mlflow.set_tracking_uri(logger._tracking_uri)
        with mlflow.start_run(run_id=logger.run_id):
            # explicit requirements: MLflow's inference would import-trace the model in a subprocess (slow)
            mlflow.pytorch.log_model(net, name="model", input_example=example,
                                     pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])

    logger._guard("model", _log)


def new_run(cfg: DictConfig, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str | None:
    """Create a finished-later MLflow run for a non-Lightning stage (e.g. style); None when untracked.
    Call only on rank 0. Add results with `log_run_files`."""
    if (uri := usable_uri(cfg)) is None:
        return None
    from mlflow import MlflowClient
    from mlflow.entities import Param

    try:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(cfg.tracking.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(
            cfg.tracking.experiment, artifact_location=_artifact_location(cfg, uri))
        run = client.create_run(exp_id, run_name=run_name, tags={**tags, **git_state()})
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run.info.run_id, params=items[i:i + 100])
        return run.info.run_id
    except Exception as e:  # never lose a stage's local results over tracking
        log.warning("MLflow: run not created (%s: %s); local files are complete", type(e).__name__, e)
        return None


def log_run_files(cfg: DictConfig, run_id: str | None, files: dict[str, list[Path]], metrics: dict[str, float],
                  finish: bool = False) -> None:
    """Add metrics and artifacts to an existing run (used by stages after training, e.g. evaluate)."""
    if not cfg.tracking.enabled:
        return
    if run_id is None:
        log.warning("MLflow: no run recorded for this model (trained untracked, or an outside checkpoint): "
                    "evaluation metrics and %d artifacts not logged", sum(map(len, files.values())))
        return
    uri = tracking_uri(cfg)
    if why := unreachable(uri):
        log.warning("MLflow server %s unreachable (%s): metrics and %d artifacts not logged; see local files",
                    uri, why, sum(map(len, files.values())))
        return
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    try:
        client = MlflowClient(uri)
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        for subdir, paths in files.items():
            for p in paths:
                client.log_artifact(run_id, str(p), subdir or None)
        if finish:
            client.set_terminated(run_id)
    except Exception as e:  # as in SafeMLFlowLogger: never lose the run's local results over tracking
        log.warning("MLflow: evaluation results not logged (%s: %s); see local files", type(e).__name__, e)

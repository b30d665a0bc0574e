"""Hydra multirun (`cnnlab train -m ...`, `hparams_search=optuna`): one MLflow parent run per sweep with a
nested child run per job, a leaderboard (CSV + Markdown, printed) in the sweep folder, and the winner — chosen
on the validation metric only — evaluated on the test split once. Works with any launcher (basic, joblib,
submitit): each job writes to its own folder in the sweep folder and talks to the sweep only through files
there. An Optuna sweep's leaderboard is its study's: every trial of every session."""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cnnlab import tracking
from cnnlab.errors import UserError
from cnnlab.io import write_csv, write_json, write_text
from cnnlab.paths import RunDir, provenance, sweep_dir

log = logging.getLogger(__name__)


def _sweep_json(d: Path) -> dict:
    return json.loads((d / "sweep.json").read_text()) if (d / "sweep.json").is_file() else {}


def parent_run_id() -> str | None:
    """The sweep's MLflow parent run, for a job of a running sweep; None otherwise."""
    return _sweep_json(d).get("parent_run_id") if (d := sweep_dir()) else None


def _task_cfg(config: DictConfig) -> DictConfig:
    return OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])


def _markdown(rows: list[dict]) -> str:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v if v is not None else "")  # noqa: E731
    return "\n".join(["| " + " | ".join(fields) + " |", "|" + " --- |" * len(fields)]
                     + ["| " + " | ".join(fmt(r.get(k)) for k in fields) + " |" for r in rows]) + "\n"


def study_of(config: DictConfig) -> dict | None:
    """{storage, name} of an Optuna sweep (cnnlab's sweeper), else None."""
    s = config.hydra.sweeper
    if not str(s.get("_target_", "")).endswith("cnnlab_sweeper.OptunaSweeper"):
        return None
    from cnnlab.study import storage_url

    return {"storage": storage_url(s.storage), "name": s.study_name}


def tag_job(config: DictConfig, run: Path | None, tags: dict[str, str]) -> None:
    """Tags on a job's MLflow run (found through its run.json)."""
    if run and (run_id := provenance(RunDir(run).model).get("mlflow_run_id")):
        tracking.set_tags(_task_cfg(config), run_id, tags)


def test_once(run: Path) -> dict:
    """The sweep winner's test metrics: `cnnlab evaluate` of its folder with the job's own resolved config,
    run once (a continued study keeps its winner's result in the run's eval/). Test figures never steer the
    search: they are read after it."""
    metrics = RunDir(run).eval / "metrics.json"
    if not metrics.is_file():
        p = subprocess.run([sys.executable, "-m", "cnnlab", "evaluate", "--params", str(RunDir(run).config),
                            f"out_dir={run}"], capture_output=True, text=True)
        if p.returncode != 0 or not metrics.is_file():
            log.warning("the sweep's winner %s was not evaluated: %s", run,
                        (p.stderr.strip().splitlines() or ["no output"])[-1])
            return {}
    return json.loads(metrics.read_text())


def _job_rows(d: Path, monitor: str, mode: str) -> list[dict]:
    rows = [json.loads(p.read_text()) for p in sorted((d / "jobs").glob("*.json"))]
    sign = -1 if mode == "max" else 1
    return sorted(rows, key=lambda r: (r.get(monitor) is None, sign * (r.get(monitor) or 0.0)))


def finish(config: DictConfig, status: str = "FINISHED") -> None:
    """Leaderboard, winner's test result and the parent run's end: at the sweep's end, or (status FAILED)
    when it stopped on an error with what ran so far."""
    d, cfg = Path(config.hydra.sweep.dir), _task_cfg(config)
    info, monitor = _sweep_json(d), config.train.monitor
    if status != "FINISHED" and not (d / "jobs").is_dir():  # refused before any job ran: leave no trace
        tracking.delete_run(cfg, info.get("parent_run_id"))
        shutil.rmtree(d, ignore_errors=True)
        return
    if study := info.get("study"):
        from cnnlab import study as studies

        s = studies.load(study["storage"], study["name"])
        rows = [{monitor if k == "value" else k: v for k, v in r.items()} for r in studies.rows(s)]
        best = studies.winner(s)
        winner = Path(best.user_attrs["run"]) if best and best.user_attrs.get("run") else None
        extra = {"winner_trial": best.number} if best else {}
    else:
        rows = _job_rows(d, monitor, config.train.monitor_mode)
        winner = Path(rows[0]["run"]) if rows and rows[0].get(monitor) is not None else None
        extra = {}
    if not rows:
        tracking.log_run_files(cfg, info.get("parent_run_id"), {}, {}, finish=status)
        return
    write_csv(rows, d / "leaderboard.csv")
    write_text(d / "leaderboard.md", md := _markdown(rows))
    print(f"\nleaderboard ({d}):\n{md}")
    metrics = {f"best_{monitor}": rows[0][monitor]} if isinstance(rows[0].get(monitor), float) else {}
    if winner is not None and status == "FINISHED":
        test = test_once(winner)
        metrics |= {f"test/{k}": v for k, v in test.items() if isinstance(v, float | int)}
        write_json(d / "winner.json", {"run": str(winner), **extra, "test": test})
        if test:
            print(f"winner {winner}: test accuracy {test.get('accuracy', float('nan')):.4f} (evaluated once, "
                  "after the search; the search saw validation only)")
    boards = [d / "leaderboard.csv", d / "leaderboard.md"]
    tracking.log_run_files(cfg, info.get("parent_run_id"), {"": boards}, metrics | extra, finish=status)


def start(config: DictConfig) -> None:
    """The sweep's MLflow parent run (tagged with its owner, this process, so a rerun of its study can tell it
    died) and sweep.json, which tells the jobs about it."""
    from cnnlab.study import owner

    d = Path(config.hydra.sweep.dir)
    cfg = _task_cfg(config)
    study = study_of(config)
    run_id = tracking.new_run(cfg, f"sweep-{d.name}",
                              {"sweep.overrides": " ".join(config.hydra.overrides.task)},
                              {"sweep_id": d.name, "sweep_dir": str(d.resolve()), "owner": owner(),
                               "dataset": cfg.data.name, "model": cfg.model.name,
                               **({"optuna_study": study["name"], "optuna_storage": study["storage"]}
                                  if study else {})})
    write_json(d / "sweep.json", {"parent_run_id": run_id, "overrides": list(config.hydra.overrides.task),
                                  "study": study})
    # a sweep that stops on an error (a failed job of a grid, a study's trials failing in a row) never reaches
    # on_multirun_end: keep what ran and close the parent run as failed, not RUNNING forever
    atexit.register(_abandoned, config)


def _abandoned(config: DictConfig) -> None:
    finish(config, "FAILED")


def recover(config: DictConfig) -> None:
    """MLflow's side of study.recover: the parent runs of this study's sweeps that died (kill -9, a lost node)
    on this host, and their trials' runs, RUNNING for good otherwise, closed as KILLED."""
    from cnnlab.study import dead

    study = study_of(config)
    tags = {"optuna_study": study["name"], "optuna_storage": study["storage"]}
    if closed := tracking.close_abandoned(_task_cfg(config), tags, dead):
        log.warning("study %s: MLflow runs %s were left running by a sweep that died; closed as KILLED",
                    study["name"], closed)


def refuse(config: DictConfig, e: Exception) -> None:
    """A sweep refused: one line, as for every cnnlab command (Hydra would print a traceback)."""
    print(f"cnnlab {config.hydra.job.name}: error: {e}", file=sys.stderr)
    sys.exit(2)


class SweepTracker(Callback):
    """Hydra callback (conf/config.yaml: hydra.callbacks.sweep)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if study_of(config):  # the Optuna sweeper starts it once its study accepts this session
            return
        try:
            start(config)
        except UserError as e:  # a broken MLflow store
            refuse(config, e)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus
        from hydra.types import RunMode

        if config.hydra.mode != RunMode.MULTIRUN:  # Hydra calls this for single runs too
            return
        job = Path(config.hydra.runtime.output_dir)
        ok = job_return.status == JobStatus.COMPLETED
        row = {"job": config.hydra.job.num, "overrides": " ".join(job_return.overrides or []),
               "status": "ok" if ok else f"failed: {job_return._return_value}"}
        if ok and isinstance(job_return.return_value, float):
            train = RunDir(job).train / "metrics.json"
            row[config.train.monitor] = job_return.return_value
            row["time_s"] = json.loads(train.read_text()).get("time_s") if train.is_file() else None
            row["run"] = os.path.relpath(job)
        write_json(Path(config.hydra.sweep.dir) / "jobs" / f"{config.hydra.job.num}.json", row)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.unregister(_abandoned)
        finish(config)

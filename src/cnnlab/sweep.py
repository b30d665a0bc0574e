"""Hydra multirun (`cnnlab train -m ...`): one MLflow parent run per sweep with a nested child run per job,
and a leaderboard (CSV + Markdown, printed) in the sweep folder. Works with any launcher (basic, joblib,
submitit): each job writes to its own folder in the sweep folder and talks to the sweep only through files
there."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cnnlab import tracking
from cnnlab.io import write_csv, write_json, write_text
from cnnlab.paths import RunDir, sweep_dir

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


class SweepTracker(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        d = Path(config.hydra.sweep.dir)
        cfg = _task_cfg(config)
        run_id = tracking.new_run(cfg, f"sweep-{d.name}",
                                  {"sweep.overrides": " ".join(config.hydra.overrides.task)},
                                  {"sweep_id": d.name, "sweep_dir": str(d.resolve()),
                                   "dataset": cfg.data.name, "model": cfg.model.name})
        write_json(d / "sweep.json", {"parent_run_id": run_id,
                                      "overrides": list(config.hydra.overrides.task)})

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus
        from hydra.types import RunMode

        if config.hydra.mode != RunMode.MULTIRUN:  # Hydra calls this for single runs too
            return
        job = Path(config.hydra.runtime.output_dir)
        row = {"job": config.hydra.job.num, "overrides": " ".join(job_return.overrides or []),
               "status": "ok" if job_return.status == JobStatus.COMPLETED else "failed"}
        if job_return.status == JobStatus.COMPLETED and isinstance(job_return.return_value, float):
            train = RunDir(job).train / "metrics.json"
            row[config.train.monitor] = job_return.return_value
            row["time_s"] = json.loads(train.read_text()).get("time_s") if train.is_file() else None
            row["run"] = os.path.relpath(job)
        write_json(Path(config.hydra.sweep.dir) / "jobs" / f"{config.hydra.job.num}.json", row)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        d = Path(config.hydra.sweep.dir)
        rows = [json.loads(p.read_text()) for p in sorted((d / "jobs").glob("*.json"))]
        if not rows:
            return
        metric = config.train.monitor
        sign = -1 if config.train.monitor_mode == "max" else 1
        rows.sort(key=lambda r: (r.get(metric) is None, sign * (r.get(metric) or 0.0)))
        write_csv(rows, d / "leaderboard.csv")
        write_text(d / "leaderboard.md", md := _markdown(rows))
        print(f"\nleaderboard ({d}):\n{md}")
        best = rows[0].get(metric)
        tracking.log_run_files(_task_cfg(config), _sweep_json(d).get("parent_run_id"),
                               {"": [d / "leaderboard.csv", d / "leaderboard.md"]},
                               {f"best_{metric}": best} if isinstance(best, float) else {}, finish=True)

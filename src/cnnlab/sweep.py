"""Hydra multirun (`cnnlab train -m ...`): one MLflow parent run per sweep with a nested child run per job,
and a leaderboard (CSV + Markdown, printed) in the sweep directory. Works with any launcher (basic, joblib,
submitit): jobs talk to the sweep only through files in the sweep directory."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cnnlab import tracking
from cnnlab.io import write_json, write_text

log = logging.getLogger(__name__)


def sweep_dir() -> Path | None:
    """The running sweep's directory, or None outside a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir)


def job_run_name(cfg: DictConfig) -> str:
    """Parallel jobs must not share models/<run>/ or reports/<run>/: name them after the sweep and job."""
    from hydra.core.hydra_config import HydraConfig

    return f"{cfg.run_name}/{sweep_dir().name}-{HydraConfig.get().job.num}"


def parent_run_id() -> str | None:
    d = sweep_dir()
    return json.loads((d / "sweep.json").read_text()).get("parent_run_id") if d and (d / "sweep.json").is_file() else None


class SweepTracker(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        d = Path(config.hydra.sweep.dir)
        cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        run_id = tracking.new_run(cfg, f"sweep-{d.name}", {"sweep.overrides": " ".join(config.hydra.overrides.task)},
                                  {"sweep_dir": str(d), "dataset": cfg.data.name, "model": cfg.model.name})
        write_json(d / "sweep.json", {"parent_run_id": run_id})

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus
        from hydra.types import RunMode

        if config.hydra.mode != RunMode.MULTIRUN:  # Hydra calls this for single runs too
            return
        d = Path(config.hydra.sweep.dir)
        num = config.hydra.job.num
        row = {"job": num, "overrides": " ".join(job_return.overrides or []),
               "status": "ok" if job_return.status == JobStatus.COMPLETED else "failed"}
        if job_return.status == JobStatus.COMPLETED and isinstance(job_return.return_value, float):
            row[config.train.monitor] = job_return.return_value
            run = Path(config.paths.reports_dir) / f"{config.run_name}/{d.name}-{num}"
            train = json.loads((run / "train/metrics.json").read_text()) if (run / "train/metrics.json").is_file() else {}
            row.update({"time_s": train.get("time_s"), "run": f"{config.run_name}/{d.name}-{num}"})
        write_json(d / "jobs" / f"{num}.json", row)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        d = Path(config.hydra.sweep.dir)
        rows = [json.loads(p.read_text()) for p in sorted((d / "jobs").glob("*.json"))]
        if not rows:
            return
        metric = config.train.monitor
        sign = -1 if config.train.monitor_mode == "max" else 1
        rows.sort(key=lambda r: (r.get(metric) is None, sign * (r.get(metric) or 0.0)))
        fields = list(dict.fromkeys(k for r in rows for k in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
        write_text(d / "leaderboard.csv", buf.getvalue())
        fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v if v is not None else "")  # noqa: E731
        md = "\n".join(["| " + " | ".join(fields) + " |", "|" + " --- |" * len(fields)]
                       + ["| " + " | ".join(fmt(r.get(k)) for k in fields) + " |" for r in rows])
        write_text(d / "leaderboard.md", md + "\n")
        print(f"\nleaderboard ({d}):\n{md}")
        run_id = json.loads((d / "sweep.json").read_text()).get("parent_run_id") if (d / "sweep.json").is_file() else None
        cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        best = rows[0].get(metric)
        tracking.log_run_files(cfg, run_id, {"": [d / "leaderboard.csv", d / "leaderboard.md"]},
                               {f"best_{metric}": best} if isinstance(best, float) else {}, finish=True)

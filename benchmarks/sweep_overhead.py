"""Per-trial overhead of an Optuna sweep with the basic launcher: everything of a trial that is not its
training loop (Hydra's job config, validation, data and model set-up, MLflow run, params, checkpoints, the
MLflow model, the sweeper's ask/tell), through the real CLI in a scratch folder (docs/BENCHMARKS.md).

    .venv/bin/python benchmarks/sweep_overhead.py --workdir /tmp/sweep_overhead --trials 12

overhead of trial n = (start of trial n+1 − start of trial n) − its epochs' time (history.csv time_s: training
and validation). The first trial also pays the process's imports: reported apart, with the sweeper's
start, as start-up.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna

CNNLAB = str(Path(sys.executable).with_name("cnnlab"))
BASE = ["data=fashion_mnist", "train.per_class=50", "trainer.max_epochs=1", "hparams_search=optuna",
        "hydra/sweeper/pruner=none"]


def overheads(workdir: Path, name: str, trials: int, tracking: bool) -> dict:
    t0 = time.time()
    subprocess.run([CNNLAB, "train", *BASE, f"hydra.sweeper.n_trials={trials}",
                    f"hydra.sweeper.study_name={name}", f"tracking.enabled={str(tracking).lower()}"],
                   cwd=workdir, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.time() - t0
    ts = sorted(optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'optuna.db'}").trials,
                key=lambda t: t.number)
    out = []
    for a, b in zip(ts, ts[1:]):
        with open(workdir / a.user_attrs["run"] / "train/history.csv") as f:
            loop = sum(float(r["time_s"]) for r in csv.DictReader(f))
        out.append((b.datetime_start - a.datetime_start).total_seconds() - loop)
    # trial 0 also imports torch, Lightning and MLflow for the process: start-up, paid once per sweep
    return {"tracking": tracking, "startup_s": ts[0].datetime_start.timestamp() - t0 + out[0], "wall_s": wall,
            "overhead_s": out[1:]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--trials", type=int, default=12)
    a = ap.parse_args(argv)
    a.workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run([CNNLAB, "prepare", BASE[0]], cwd=a.workdir, check=True, stdout=subprocess.DEVNULL)
    print("| MLflow | start-up, once per sweep (s) | overhead per trial (s), median | mean ± std | max "
          "|\n| --- | --- | --- | --- | --- |")
    for tracking in (True, False):
        r = overheads(a.workdir, f"overhead-{tracking}-{int(time.time())}", a.trials, tracking)
        o = r["overhead_s"]
        print(f"| {'on' if tracking else 'off'} | {r['startup_s']:.1f} | {statistics.median(o):.2f} | "
              f"{statistics.mean(o):.2f} ± {statistics.stdev(o):.2f} | {max(o):.2f} |", flush=True)


if __name__ == "__main__":
    main()

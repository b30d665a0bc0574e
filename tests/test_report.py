"""The report on its own: the pipeline's sections and summary metrics, and with report.history every training
run in MLflow (what differs between them, DVC experiment names) and every sweep's leaderboard."""

from __future__ import annotations

import json

from mlflow import MlflowClient

from cnnlab.io import write_csv, write_json
from cnnlab.paths import RunDir
from cnnlab.stages import report
from cnnlab.tracking import experiment_id, tracking_uri


def test_pipeline_summary_experiments_and_every_sweep(cfg, workdir):
    c = cfg("out_dir=page")
    for key, acc in (("scratch", 0.9), ("transfer", 0.8)):
        run = RunDir(c.pipeline[key])
        write_json(run.eval / "metrics.json", {"accuracy": acc, "macro_f1": acc - 0.1, "loss": 0.3})
        write_json(run.train / "metrics.json", {"best_val/acc": acc + 0.01, "epochs": 3, "time_s": 12.5})
    client = MlflowClient(tracking_uri(c))
    exp = experiment_id(c, tracking_uri(c))
    for name, lr, acc in (("happy-fox", "0.001", 0.9), ("sad-owl", "0.01", 0.7)):
        r = client.create_run(exp, run_name=f"{name}:seed", tags={"data_hash": "abc", "dvc_exp_name": name})
        client.log_param(r.info.run_id, "optimizer.lr", lr)
        client.log_param(r.info.run_id, "seed", "42")  # the same in both: not a difference
        client.log_metric(r.info.run_id, "test/accuracy", acc)
    for sweep in ("10-00-00-train-sweep", "11-00-00-train-sweep"):
        write_csv([{"job": 0, "overrides": "optimizer.lr=0.1", "val/acc": 0.5}],
                  workdir / "runs/2026-11-27" / sweep / "leaderboard.csv")

    summary = report.run(c)
    assert summary == json.loads((workdir / "page/metrics.json").read_text())
    assert summary["scratch"]["test_accuracy"] == 0.9 and summary["transfer"]["best_val_acc"] == 0.81
    page = (workdir / "page/index.html").read_text()
    assert "happy-fox" in page and "sad-owl" in page and "optimizer.lr=0.01" in page and "seed=42" not in page
    assert "10-00-00-train-sweep" in page and "11-00-00-train-sweep" in page  # every sweep, not the latest

    quiet = report.run(cfg("out_dir=page2", "report.history=false"))  # the DVC stage: its own inputs only
    assert quiet == summary and "happy-fox" not in (workdir / "page2/index.html").read_text()

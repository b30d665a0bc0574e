"""Hydra multirun through the real CLI: MLflow parent/child runs, leaderboard, joblib, Optuna, SLURM
config."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hydra.utils import instantiate
from mlflow import MlflowClient

from cnnlab.config import compose

SWEEP = ["debug=tiny", "train.batch_size=100"]


def runs(workdir: Path) -> list:
    client = MlflowClient(f"sqlite:///{(workdir / 'mlflow.db').resolve()}")
    return client.search_runs([client.get_experiment_by_name("cnnlab").experiment_id])


def leaderboard(workdir: Path) -> list[dict]:
    [board] = workdir.glob("runs/*/*-train-sweep/leaderboard.csv")
    assert board.with_suffix(".md").is_file()
    with open(board) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_multirun_parent_run_children_and_leaderboard(cli, workdir, synthetic):
    out = cli("train", "-m", *SWEEP, "optimizer.lr=1e-3,1e-2").stdout
    assert "leaderboard" in out
    rows = leaderboard(workdir)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"}
    assert float(rows[0]["val/acc"]) >= float(rows[1]["val/acc"])  # best first
    assert len({r["run"] for r in rows}) == 2  # every job its own output dirs
    for r in rows:
        assert (workdir / r["run"] / "model/best.ckpt").is_file()  # every job its own folder in the sweep's
    all_runs = runs(workdir)
    [parent] = [r for r in all_runs if r.info.run_name.startswith("sweep-")]
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(all_runs) == 3 and len(children) == 2
    assert sorted(r.info.run_name for r in children) == ["seed_mnist_cnn-synthetic/job0",
                                                         "seed_mnist_cnn-synthetic/job1"]  # told apart
    assert parent.info.status == "FINISHED" and "best_val/acc" in parent.data.metrics


@pytest.mark.slow
def test_joblib_four_parallel_jobs_all_recorded_in_sqlite(cli, workdir, synthetic):
    cli("train", "-m", *SWEEP, "hydra/launcher=joblib", "hydra.launcher.n_jobs=4",
        "optimizer.lr=1e-3,2e-3,3e-3,4e-3")
    assert len(leaderboard(workdir)) == 4
    children = [r for r in runs(workdir) if "mlflow.parentRunId" in r.data.tags]
    # no "database is locked"
    assert len(children) == 4 and all("val/acc" in r.data.metrics for r in children)


@pytest.mark.slow
def test_optuna_search_optimises_the_returned_metric(cli, workdir, synthetic):
    cli("train", *SWEEP, "hparams_search=optuna", "hydra.sweeper.n_trials=2")
    assert len(leaderboard(workdir)) == 2
    [results] = workdir.glob("runs/*/*-train-sweep/optimization_results.yaml")
    assert "best_value" in results.read_text()


def test_ddp_inside_multirun_is_refused_with_the_way_that_works(cli, workdir, synthetic):
    p = cli("train", "-m", *SWEEP, "trainer=ddp_cpu", "optimizer.lr=1e-3", check=False)
    assert "use trainer.strategy=ddp_spawn" in p.stderr


def test_slurm_launcher_config_is_valid():
    cfg = compose(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"],
                  return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    assert type(instantiate(launcher)).__name__ == "SlurmLauncher"  # config accepted by the plugin (not run)


@pytest.mark.slow
def test_ddp_spawn_inside_multirun_works(cli, workdir, synthetic):
    cli("train", "-m", *SWEEP, "trainer=ddp_cpu", "trainer.strategy=ddp_spawn", "optimizer.lr=1e-3")
    [row] = leaderboard(workdir)
    assert row["status"] == "ok" and 0.0 < float(row["val/acc"]) <= 1.0
    assert len([r for r in runs(workdir) if "mlflow.parentRunId" in r.data.tags]) == 1

"""Hydra multirun through the real CLI: MLflow parent/child runs, leaderboard, the winner tested once,
SLURM config, promotion to a DVC experiment. Optuna studies, and the joblib launcher and ddp_spawn inside a
sweep: tests/test_study.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from hydra.utils import instantiate
from mlflow import MlflowClient
from omegaconf import OmegaConf

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
    # registered: the winner, the one run tested, and only it
    out = cli("train", "-m", *SWEEP, "optimizer.lr=1e-3,1e-2", "tracking.registered_model=best").stdout
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
    # selected on validation, tested once afterwards: on the winner's run and the sweep's parent run
    [winner] = workdir.glob("runs/*/*-train-sweep/winner.json")
    won = json.loads(winner.read_text())
    assert won["run"] == rows[0]["run"] and 0.0 <= won["test"]["accuracy"] <= 1.0
    assert parent.data.metrics["test/accuracy"] == won["test"]["accuracy"]
    assert (workdir / won["run"] / "eval/metrics.json").is_file()
    client = MlflowClient(f"sqlite:///{(workdir / 'mlflow.db').resolve()}")
    [version] = client.search_model_versions("name='best'")
    winner_run = json.loads((workdir / won["run"] / "model/run.json").read_text())["mlflow_run_id"]
    assert version.run_id == winner_run
    assert client.get_model_version_by_alias("best", "champion").version == version.version

    # promote: the winner's own overrides, as the DVC experiment that gives it the whole pipeline
    out = cli("promote").stdout
    lr = rows[0]["overrides"].split("lr=")[1].split()[0]
    assert "dvc exp run -n" in out and f"-S optimizer.lr={lr}" in out
    overrides = out.split("dvc exp run -n ")[1].split()[1:][1::2]
    composed = OmegaConf.to_container(compose(overrides), resolve=True)
    trained = yaml.safe_load((workdir / won["run"] / "model/config.yaml").read_text())
    for key in ("model", "optimizer", "train", "trainer", "data", "seed"):
        assert composed[key] == trained[key], key


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
def test_a_failing_job_is_recorded_and_the_sweep_closed(cli, workdir, synthetic):
    # a value every job accepts, that blows up in training (a bad value is refused before any job starts)
    p = cli("train", "-m", *SWEEP, "optimizer=sgd", "optimizer.lr=1e-3,1e38", check=False)
    assert p.returncode != 0
    rows = leaderboard(workdir)  # what ran is kept
    assert {r["status"][:6] for r in rows} == {"ok", "failed"}
    assert any("non-finite training loss" in r["status"] for r in rows)  # the job's own one-line error
    [parent] = [r for r in runs(workdir) if r.info.run_name.startswith("sweep-")]
    assert parent.info.status == "FAILED"  # not RUNNING forever


def test_promote_without_a_sweep_is_one_line(cli, workdir):
    p = cli("promote", check=False)
    assert p.returncode == 2 and "no finished sweep" in p.stderr and "Traceback" not in p.stderr

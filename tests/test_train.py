"""Training and evaluation on tiny synthetic data, in-process and through the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from cnnlab.errors import UserError
from cnnlab.stages import evaluate, prepare, train
from conftest import CNNLAB

TINY = ["data=synthetic", "trainer.max_epochs=2", "train.batch_size=64"]


def mlflow_runs(db: Path) -> list:
    client = MlflowClient(f"sqlite:///{db.resolve()}")
    exp = client.get_experiment_by_name("cnnlab")
    return client.search_runs([exp.experiment_id]) if exp else []


def history(path: Path) -> list[list[str]]:
    """history.csv rows without the wall-time column."""
    rows = [line.split(",") for line in path.read_text().splitlines()]
    drop = rows[0].index("time_s")
    return [[v for i, v in enumerate(r) if i != drop] for r in rows]


@pytest.fixture
def synthetic(cfg):
    prepare.run(cfg("data=synthetic"))


def test_train_then_evaluate_cli_one_mlflow_run(cli, workdir, synthetic):
    cli("train", *TINY, "trainer.max_time={minutes:10}")  # a dict value reaches Lightning as a dict
    cli("evaluate", "data=synthetic")
    model_dir, rep = workdir / "models/seed_mnist_cnn-synthetic", workdir / "reports/seed_mnist_cnn-synthetic"
    for f in ("best.ckpt", "last.ckpt", "run.json", "config.yaml"):
        assert (model_dir / f).is_file(), f
    for f in ("train/metrics.json", "train/history.csv", "eval/metrics.json", "eval/confusion.json",
              "eval/figures/confusion_matrix.png", "eval/figures/predictions.png", "eval/figures/mistakes.png",
              "eval/figures/curves.png", "eval/figures/gradcam.png"):
        assert (rep / f).is_file(), f
    assert len(history(rep / "train/history.csv")) == 3  # header + 2 epochs
    m = json.loads((rep / "eval/metrics.json").read_text())
    assert 0.3 < m["accuracy"] <= 1 and m["num_samples"] == 200 and len(m["per_class_accuracy"]) == 10
    assert len(json.loads((rep / "eval/confusion.json").read_text())) == 200

    runs = mlflow_runs(workdir / "mlflow.db")
    assert len(runs) == 1
    r = runs[0]
    assert r.info.run_id == json.loads((model_dir / "run.json").read_text())["mlflow_run_id"]
    assert r.data.params["model.name"] == "seed_mnist_cnn" and r.data.params["optimizer.lr"] == "0.001"
    assert r.data.tags["dataset"] == "synthetic" and r.data.tags["model"] == "seed_mnist_cnn"
    assert {"git_sha", "git_dirty", "data_hash"} <= set(r.data.tags)
    assert r.data.metrics["test/accuracy"] == pytest.approx(m["accuracy"])
    client = MlflowClient(f"sqlite:///{(workdir / 'mlflow.db').resolve()}")
    assert len(client.get_metric_history(r.info.run_id, "val/acc")) == 2
    paths = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"config.yaml", "checkpoints", "eval", "history.csv"} <= paths
    assert {a.path for a in client.list_artifacts(r.info.run_id, "eval/figures")} >= {"eval/figures/predictions.png"}
    # the model logged with mlflow.pytorch.log_model loads back and predicts
    import mlflow.pytorch
    mlflow.set_tracking_uri(f"sqlite:///{(workdir / 'mlflow.db').resolve()}")
    model = mlflow.pytorch.load_model(f"runs:/{r.info.run_id}/model")
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_nonfinite_loss_is_a_clear_error_and_keeps_checkpoint(cfg, workdir, synthetic):
    train.run(cfg(*TINY, "trainer.max_epochs=1", "tracking.enabled=false"))
    last = workdir / "models/seed_mnist_cnn-synthetic/last.ckpt"
    before = last.read_bytes()
    with pytest.raises(UserError, match=r"non-finite training loss .* lower optimizer.lr"):
        train.run(cfg(*TINY, "optimizer=sgd", "optimizer.lr=1e38", "tracking.enabled=false"))
    assert last.read_bytes() == before


def test_resume_without_checkpoint(cfg, synthetic):
    with pytest.raises(UserError, match="resume=true but there is no models/seed_mnist_cnn-synthetic/last.ckpt"):
        train.run(cfg(*TINY, "resume=true", "tracking.enabled=false"))


def test_evaluate_errors(cfg, workdir, synthetic):
    with pytest.raises(UserError, match="no checkpoint models/seed_mnist_cnn-synthetic/best.ckpt"):
        evaluate.run(cfg("data=synthetic", "tracking.enabled=false"))
    train.run(cfg(*TINY, "trainer.max_epochs=1", "tracking.enabled=false"))
    prepare.run(cfg("data=synthetic", "data.name=rgb", "data.channels=3", "data.image_size=32"))
    with pytest.raises(UserError, match=r"built for 1×28×28 inputs, data has 3×32×32"):
        evaluate.run(cfg("data=synthetic", "data.name=rgb", "tracking.enabled=false",
                         "evaluate.ckpt=models/seed_mnist_cnn-synthetic/best.ckpt"))


def test_training_is_reproducible_and_learns(cfg, workdir, synthetic):
    kw = ("tracking.enabled=false", "deterministic=true", "trainer.max_epochs=3")
    a = train.run(cfg(*TINY, *kw, "run_name=a"))
    b = train.run(cfg(*TINY, *kw, "run_name=b"))
    assert a == b and a > 0.5  # chance is 0.1
    assert history(workdir / "reports/a/train/history.csv") == history(workdir / "reports/b/train/history.csv")


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(cli, workdir, synthetic):
    args = [*TINY, "trainer.max_epochs=6", "deterministic=true", "train.augment.flip=true",
            "train.augment.crop_padding=2", "scheduler=onecycle"]
    cli("train", *args, "run_name=straight")
    p = subprocess.Popen([CNNLAB, "train", *args, "run_name=killed"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    hist = workdir / "reports/killed/train/history.csv"
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if hist.is_file() and len(hist.read_text().splitlines()) >= 3:  # 2 epochs checkpointed
            break
        time.sleep(0.02)
    assert p.poll() is None, "training finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    done = len(hist.read_text().splitlines()) - 1
    assert done < 6
    cli("train", *args, "run_name=killed", "resume=true")
    assert history(hist) == history(workdir / "reports/straight/train/history.csv")
    runs = mlflow_runs(workdir / "mlflow.db")
    assert len(runs) == 2  # the resumed training continued its own run
    killed = json.loads((workdir / "models/killed/run.json").read_text())["mlflow_run_id"]
    client = MlflowClient(f"sqlite:///{(workdir / 'mlflow.db').resolve()}")
    assert len({m.step for m in client.get_metric_history(killed, "val/acc")}) == 6  # every epoch, one run


@pytest.mark.slow
def test_ddp_two_cpu_processes_one_run_same_accuracy(cli, workdir, synthetic):
    common = [*TINY, "trainer.max_epochs=4", "train.batch_size=32", "deterministic=true"]
    out = cli("train", *common, "trainer=ddp_cpu", "run_name=ddp")
    assert "Starting with 2 processes" in out.stdout + out.stderr
    cli("train", *common, "run_name=single")
    ddp = json.loads((workdir / "reports/ddp/train/metrics.json").read_text())
    single = json.loads((workdir / "reports/single/train/metrics.json").read_text())
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert ddp["global_steps"] == single["global_steps"]  # equal global batch → equal steps
    assert abs(ddp["best_val/acc"] - single["best_val/acc"]) <= 0.1  # 100 val images: within noise
    assert ddp["best_val/acc"] > 0.5
    assert len(mlflow_runs(workdir / "mlflow.db")) == 2  # one per training, whatever the process count

"""Training and evaluation on tiny synthetic data, in-process and through the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import CNNLAB
from mlflow import MlflowClient

from cnnlab.errors import UserError
from cnnlab.stages import evaluate, prepare, train
from cnnlab.tasks.callbacks import EpochProgressBar, read_history

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
    out = cli("train", *TINY, "trainer.max_time={minutes:10}")  # a dict value reaches Lightning as a dict
    log = out.stdout + out.stderr
    assert "epoch 1/2  " in log and "epoch 2/2  " in log  # no tty: one line per epoch, counted from 1
    [rep] = workdir.glob("runs/*/*-train")  # a folder of its own, under runs/
    cli("evaluate", "data=synthetic", f"out_dir={rep.relative_to(workdir)}")
    model_dir = rep / "model"
    assert not (rep / ".partial").exists()
    for f in ("best.ckpt", "last.ckpt", "run.json", "config.yaml"):
        assert (model_dir / f).is_file(), f
    for f in ("train/metrics.json", "train/history.csv", "eval/metrics.json", "eval/confusion.json",
              "eval/figures/confusion_matrix.png", "eval/figures/predictions.png",
              "eval/figures/mistakes.png", "eval/figures/curves.png", "eval/figures/gradcam.png"):
        assert (rep / f).is_file(), f
    assert len(history(rep / "train/history.csv")) == 3  # header + 2 epochs
    m = json.loads((rep / "eval/metrics.json").read_text())
    assert 0.3 < m["accuracy"] <= 1 and m["num_samples"] == 200
    assert len(json.loads((rep / "eval/per_class.json").read_text())["accuracy"]) == 10
    assert len(json.loads((rep / "eval/confusion.json").read_text())) == 200

    runs = mlflow_runs(workdir / "mlflow.db")
    assert len(runs) == 1
    r = runs[0]
    assert r.info.run_id == json.loads((model_dir / "run.json").read_text())["mlflow_run_id"]
    assert r.data.params["model.name"] == "seed_mnist_cnn" and r.data.params["optimizer.lr"] == "0.001"
    assert r.data.tags["dataset"] == "synthetic" and r.data.tags["model"] == "seed_mnist_cnn"
    assert {"git_sha", "git_dirty", "data_hash", "out_dir"} <= set(r.data.tags)
    assert r.data.tags["out_dir"] == str(rep.resolve())
    assert r.data.metrics["test/accuracy"] == pytest.approx(m["accuracy"])
    client = MlflowClient(f"sqlite:///{(workdir / 'mlflow.db').resolve()}")
    # epochs count from 1 in history.csv and in MLflow, whose per-epoch step is the epoch number
    rows = read_history(rep / "train/history.csv")
    assert [row["epoch"] for row in rows] == [1, 2]
    val_acc = sorted(client.get_metric_history(r.info.run_id, "val/acc"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in val_acc] == [(row["epoch"], row["val/acc"]) for row in rows]
    assert [m.step for m in client.get_metric_history(r.info.run_id, "lr")] == [1, 2]
    paths = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"config.yaml", "checkpoints", "eval", "history.csv"} <= paths
    import mlflow

    mlflow.set_tracking_uri(client.tracking_uri)  # the logged model is named as its run, not "model"
    [logged] = mlflow.search_logged_models(experiment_ids=[r.info.experiment_id], output_format="list")
    assert logged.name == r.info.run_name.replace("/", "-") == "seed_mnist_cnn-synthetic"
    figures = {a.path for a in client.list_artifacts(r.info.run_id, "eval/figures")}
    assert "eval/figures/predictions.png" in figures
    # the model logged with mlflow.pytorch.log_model loads back and predicts
    import mlflow.pytorch
    mlflow.set_tracking_uri(f"sqlite:///{(workdir / 'mlflow.db').resolve()}")
    model = mlflow.pytorch.load_model(f"runs:/{r.info.run_id}/{logged.name}")
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def snapshot(folder: Path) -> dict[str, bytes]:
    """A run's files; .partial/ is where a new run trains until it succeeds (kept to resume it)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".partial" not in p.parts}


def test_failed_run_leaves_the_run_it_would_replace_byte_identical(cfg, workdir, synthetic):
    train.run(cfg(*TINY, "trainer.max_epochs=1", "tracking.enabled=false", "out_dir=r"))
    before = snapshot(workdir / "r")
    with pytest.raises(UserError, match=r"non-finite training loss .* lower optimizer.lr"):
        train.run(cfg(*TINY, "optimizer=sgd", "optimizer.lr=1e38", "tracking.enabled=false", "out_dir=r"))
    assert snapshot(workdir / "r") == before
    with pytest.raises(UserError, match="resume=true: model differs"):  # a resume that would mix two models
        train.run(cfg(*TINY, "model=seed_mlp", "resume=true", "tracking.enabled=false", "out_dir=r"))
    assert snapshot(workdir / "r") == before


def test_resume_without_checkpoint(cfg, synthetic):
    with pytest.raises(UserError, match="resume=true but there is no r/model/last.ckpt: pass out_dir="):
        train.run(cfg(*TINY, "resume=true", "tracking.enabled=false", "out_dir=r"))


def test_evaluate_errors(cfg, workdir, synthetic):
    with pytest.raises(UserError,
                       match="nothing to evaluate in r: pass out_dir=<a run folder> or evaluate.ckpt="):
        evaluate.run(cfg("data=synthetic", "tracking.enabled=false", "out_dir=r"))
    train.run(cfg(*TINY, "trainer.max_epochs=1", "tracking.enabled=false", "out_dir=r"))
    prepare.run(cfg("data=synthetic", "data.name=rgb", "data.channels=3", "data.image_size=32"))
    with pytest.raises(UserError, match=r"built for 1×28×28 inputs, data has 3×32×32"):
        evaluate.run(cfg("data=synthetic", "data.name=rgb", "tracking.enabled=false", "out_dir=e",
                         "evaluate.ckpt=r/model/best.ckpt"))


def test_training_is_reproducible_and_learns(cfg, workdir, synthetic):
    kw = ("tracking.enabled=false", "deterministic=true", "trainer.max_epochs=3")
    a = train.run(cfg(*TINY, *kw, "out_dir=a"))
    b = train.run(cfg(*TINY, *kw, "out_dir=b"))
    assert a == b and a > 0.5  # chance is 0.1
    assert history(workdir / "a/train/history.csv") == history(workdir / "b/train/history.csv")


def test_progress_bar_counts_epochs_from_one():
    bar = EpochProgressBar()
    bar.setup(pl.Trainer(max_epochs=10, callbacks=[bar], logger=False), None, "fit")
    assert bar._get_train_description(0).strip() == "Epoch 1/10"  # Lightning's own bar says "Epoch 0/9"
    assert bar._get_train_description(9).strip() == "Epoch 10/10"


def test_progress_bar_shows_no_logger_version(cfg, workdir, synthetic):
    """Lightning shows the logger's version as `v_num` (an MLflow run-id prefix): noise to a reader."""
    bar = EpochProgressBar()
    trainer = pl.Trainer(max_epochs=1, callbacks=[bar], logger=pl.loggers.CSVLogger(workdir),
                         enable_checkpointing=False, limit_train_batches=1, limit_val_batches=1)
    bar.setup(trainer, None, "fit")
    assert "v_num" not in bar.get_metrics(trainer, None)


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(cli, workdir, synthetic):
    args = [*TINY, "trainer.max_epochs=6", "deterministic=true", "train.augment.flip=true",
            "train.augment.crop_padding=2", "scheduler=onecycle"]
    cli("train", *args, "out_dir=straight")
    p = subprocess.Popen([CNNLAB, "train", *args, "out_dir=killed"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    hist = workdir / "killed/.partial/train/history.csv"  # an unfinished run trains beside the folder
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
    cli("train", *args, "out_dir=killed", "resume=true")
    assert history(workdir / "killed/train/history.csv") == history(workdir / "straight/train/history.csv")
    runs = mlflow_runs(workdir / "mlflow.db")
    assert len(runs) == 2  # the resumed training continued its own run
    killed = json.loads((workdir / "killed/model/run.json").read_text())["mlflow_run_id"]
    client = MlflowClient(f"sqlite:///{(workdir / 'mlflow.db').resolve()}")
    # every epoch in one run, at step = epoch (an epoch logged before the kill is logged again at its step)
    assert {m.step for m in client.get_metric_history(killed, "val/acc")} == set(range(1, 7))


@pytest.mark.slow
def test_ddp_two_cpu_processes_one_run_same_accuracy(cli, workdir, synthetic):
    common = [*TINY, "trainer.max_epochs=4", "train.batch_size=32", "deterministic=true"]
    out = cli("train", *common, "trainer=ddp_cpu")  # every rank must find the folder rank 0 made
    assert "Starting with 2 processes" in out.stdout + out.stderr
    [ddp_dir] = workdir.glob("runs/*/*-train")
    cli("train", *common, "out_dir=single")
    ddp = json.loads((ddp_dir / "train/metrics.json").read_text())
    single = json.loads((workdir / "single/train/metrics.json").read_text())
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert ddp["global_steps"] == single["global_steps"]  # equal global batch → equal steps
    assert abs(ddp["best_val/acc"] - single["best_val/acc"]) <= 0.1  # 100 val images: within noise
    assert ddp["best_val/acc"] > 0.5
    assert len(mlflow_runs(workdir / "mlflow.db")) == 2  # one per training, whatever the process count


@pytest.mark.parametrize("steps", [3, 4, 5, 6, 400])
def test_onecycle_runs_short_runs_and_leaves_long_ones_as_torch_lays_them(steps):
    """torch's OneCycleLR divided by zero on a 4-step run (1 epoch of 500 images, batch 128)."""
    from torch.optim.lr_scheduler import OneCycleLR

    from cnnlab.tasks.schedules import onecycle

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = onecycle(opt, total_steps=steps, steps_per_epoch=steps)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(lrs) <= 0.1 and lrs[-1] < lrs[0] < 0.1  # up to the peak, then down past the start
    if steps >= 6:
        ref = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        torch_sched = OneCycleLR(ref, max_lr=0.1, total_steps=steps, pct_start=0.25, final_div_factor=1e4)
        assert sched.state_dict()["_schedule_phases"] == torch_sched.state_dict()["_schedule_phases"]


def test_onecycle_refuses_a_run_too_short_for_it():
    from cnnlab.tasks.schedules import onecycle

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(UserError, match="scheduler=onecycle needs at least 3 optimizer steps"):
        onecycle(opt, total_steps=2, steps_per_epoch=2)

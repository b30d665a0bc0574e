"""The DVC pipeline with real `dvc` commands, on synthetic data with tiny settings, in a throwaway git repo:
exact reruns, experiments compared column by column, queued experiments in the one MLflow store, user runs
that DVC never touches."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = ["debug=tiny"]
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}


def sh(*cmd: str, cwd: Path) -> str:
    p = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=900)
    if p.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.stdout + p.stderr


def test_params_file_is_the_composition_of_conf(tmp_path):
    """params.yaml is generated from conf/: it can never drift (regenerate with `cnnlab params`)."""
    from dvc.utils.hydra import compose_and_dump

    compose_and_dump(tmp_path / "params.yaml", str(ROOT / "conf"), None, "config", str(tmp_path), [])
    assert (tmp_path / "params.yaml").read_text() == (ROOT / "params.yaml").read_text()


@pytest.fixture(scope="session")
def baseline(tmp_path_factory, worker_id) -> Path:
    """A fresh clone's worth of the project, its pipeline run once (tiny) and committed with its lock file —
    built once for the whole session: the pytest workers share it (the first builds it, the others wait)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent
    r = shared / "dvc-baseline"
    with FileLock(str(r) + ".lock"):
        if not (r / ".git").is_dir() or not (r / "dvc.lock").is_file():
            shutil.rmtree(r, ignore_errors=True)
            _build(r)
    return r


def _build(r: Path) -> None:
    r.mkdir()
    for item in ("conf", "src", "pipelines", "dvc.yaml", ".dvcignore", ".gitignore"):
        (shutil.copytree if (ROOT / item).is_dir() else shutil.copy)(ROOT / item, r / item)
    sh("git", "init", "-q", cwd=r)
    sh("dvc", "init", "-q", cwd=r)
    sh("dvc", "config", "hydra.enabled", "true", cwd=r)
    sh("dvc", "config", "core.analytics", "false", cwd=r)
    sh("cnnlab", "params", *TINY, cwd=r)
    assert ran(sh("dvc", "repro", cwd=r)) == {"prepare", "train", "train-transfer", "evaluate",
                                             "evaluate-transfer", "style", "report"}
    sh("git", "add", "-A", cwd=r)
    sh("git", "commit", "-qm", "baseline", cwd=r)


@pytest.fixture
def repo(baseline, tmp_path) -> Path:
    """The baseline, copied for one test (`cp -a`: DVC compares mtimes and inodes of what it tracks). Its
    MLflow store moves with it; the runs' artifacts stay in the baseline's mlartifacts/, which no test
    reads."""
    r = tmp_path / "repo"
    subprocess.run(["cp", "-a", str(baseline), str(r)], check=True)
    return r


def ran(out: str) -> set[str]:
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")}


def clean(repo: Path) -> bool:
    return "Data and pipelines are up to date" in sh("dvc", "status", cwd=repo)


def snapshot(folder: Path) -> dict[str, str]:
    """The run folders in runs/ (not the note of the params file cnnlab saw last: .params.yaml.sha256)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.glob("*/**/*")) if p.is_file()}


def mlflow_runs(repo: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    [exp] = client.search_experiments()  # cnnlab's alone: no empty "Default" pointing at ./mlruns
    return client.search_runs([exp.experiment_id])


@pytest.mark.slow
def test_exact_reruns_fixed_metric_columns_and_remote(repo, tmp_path):
    assert clean(repo)  # after `make run` + committing dvc.lock: nothing to do, nothing listed
    for key in ("scratch", "transfer"):
        assert json.loads((repo / f"results/{key}/eval/metrics.json").read_text())["num_samples"] == 200
    page = (repo / "results/report/index.html").read_text()
    assert "seed_mnist_cnn" in page and "efficientnet_lite0" in page and "data:image/png;base64," in page
    assert "Neural style transfer" in page and "astronaut_immunohistochemistry" in page
    assert "Data and pipelines are up to date" in sh("dvc", "repro", cwd=repo)  # nothing changed: no-op

    # each edit reruns exactly the stages that read it: the transfer run has its own train/trainer settings
    for edit, stages in [("trainer.max_epochs=2", {"train", "evaluate", "report"}),
                         ("runs.transfer.optimizer.lr=0.002",
                          {"train-transfer", "evaluate-transfer", "report"}),
                         ("style.iterations=3", {"style", "report"}),
                         ("tracking.experiment=other", set())]:
        sh("cnnlab", "params", *TINY, edit, cwd=repo)
        assert ran(sh("dvc", "repro", cwd=repo)) == stages, edit
        sh("git", "checkout", "-q", "params.yaml", "dvc.lock", cwd=repo)
        sh("dvc", "checkout", "-q", cwd=repo)

    # an experiment with another model: its accuracy is in the baseline's `dvc exp show` column
    sh("dvc", "exp", "run", "-n", "mlp", *[a for o in TINY for a in ("-S", o)], "-S", "model=seed_mlp",
       cwd=repo)
    table = sh("dvc", "exp", "show", "--csv", "--only-changed", cwd=repo).splitlines()
    header = table[0].split(",")
    col = header.index("scratch.test_accuracy")  # one metrics file: no path in the column names
    rows = {r.split(",")[header.index("Experiment")] or r.split(",")[header.index("rev")]: r.split(",")
            for r in table[1:]}
    assert all(0 <= float(rows[n][col]) <= 1 for n in ("mlp", "workspace"))
    assert rows["mlp"][col] != rows["main" if "main" in rows else "master"][col]
    assert header.count("scratch.test_accuracy") == 1  # one column, whatever the model

    # the remote round trip: push outputs to a local-directory remote, pull them into a fresh clone
    sh("git", "checkout", "-q", ".", cwd=repo)
    sh("dvc", "checkout", "-q", cwd=repo)
    sh("dvc", "remote", "add", "-d", "store", str(tmp_path / "remote"), cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "remote", cwd=repo)
    sh("dvc", "push", cwd=repo)
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path)
    sh("dvc", "pull", cwd=clone)
    for out in ("results/scratch/model/best.ckpt", "results/transfer/model/best.ckpt",
                "data/prepared/synthetic/train.safetensors"):
        assert (clone / out).read_bytes() == (repo / out).read_bytes()
    assert clean(clone)


@pytest.mark.slow
def test_user_runs_survive_dvc_and_queued_experiments_reach_mlflow(repo):
    # runs by hand — a sweep and a style transfer — go to runs/, which no stage declares
    sh("cnnlab", "train", "-m", "data=synthetic", "trainer.max_epochs=1", "optimizer.lr=1e-3,2e-3", cwd=repo)
    sh("cnnlab", "style", "style.size=40", "style.iterations=2", cwd=repo)
    before = snapshot(repo / "runs")
    assert any(k.endswith("-train-sweep/0/model/best.ckpt") for k in before)
    assert any(k.endswith("astronaut_immunohistochemistry/result.png") for k in before)
    assert clean(repo)

    # a queued experiment: it runs in DVC's temporary copy, and lands in the project's one MLflow store
    sh("dvc", "exp", "run", "--queue", *[a for o in TINY for a in ("-S", o)], "-S", "optimizer.lr=2e-3",
       cwd=repo)
    sh("dvc", "queue", "start", cwd=repo)
    deadline = time.time() + 600
    while time.time() < deadline and any(s in sh("dvc", "queue", "status", cwd=repo)
                                         for s in ("Queued", "Running")):
        time.sleep(2)
    status = sh("dvc", "queue", "status", cwd=repo)
    failed = [line.split()[1] for line in status.splitlines() if "Failed" in line]
    assert status.count("Success") == 1, status + "".join(sh("dvc", "queue", "logs", n, cwd=repo)
                                                          for n in failed)
    names = {line.split()[1] for line in status.splitlines()[1:] if "Success" in line}
    runs = mlflow_runs(repo)
    by_exp = {r.data.tags.get("dvc_exp_name"): r for r in runs if r.data.tags.get("dvc_stage") == "train"}
    assert names <= set(by_exp), (names, by_exp.keys())
    for name in names:
        r = by_exp[name]
        assert r.info.run_name == f"{name}:seed_mnist_cnn-synthetic" and r.data.tags["dvc_baseline_rev"]
        assert "test/accuracy" in r.data.metrics  # evaluation is attached to the training run it evaluates
    assert not (repo / "mlruns").exists() and not list((repo / ".dvc/tmp").rglob("mlflow.db"))
    sweep = [r for r in runs if r.data.tags.get("sweep_id")]
    assert len(sweep) == 3  # the parent and its two jobs, tagged with the sweep

    # a workspace experiment too; the user's runs are untouched throughout
    sh("dvc", "exp", "run", *[a for o in TINY for a in ("-S", o)], "-S", "train.batch_size=32", cwd=repo)
    assert snapshot(repo / "runs") == before

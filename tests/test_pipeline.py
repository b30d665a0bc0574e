"""The DVC pipeline with real `dvc` commands, on synthetic data with tiny settings, in a throwaway git repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = ["data=synthetic", "trainer.max_epochs=1", "train.batch_size=64", "evaluate.grid_size=8",
        "runs.transfer.model.net.image_size=32", "runs.transfer.train.per_class=10",
        "runs.transfer.trainer.max_epochs=1", "style.size=48", "style.iterations=4", "tracking.enabled=false"]
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}


def sh(*cmd: str, cwd: Path) -> str:
    p = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=900)
    if p.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.stdout + p.stderr


STUDY = ["experiment=cifar10", "paths.params_file=pipelines/cifar10/params.yaml"]


@pytest.mark.parametrize("params_file, overrides", [("params.yaml", []), ("pipelines/cifar10/params.yaml", STUDY)])
def test_params_files_are_the_composition_of_conf(tmp_path, params_file, overrides):
    """params files are generated from conf/: they can never drift (regenerate with `cnnlab params ...`)."""
    from dvc.utils.hydra import compose_and_dump

    compose_and_dump(tmp_path / "params.yaml", str(ROOT / "conf"), None, "config", str(tmp_path), overrides)
    assert (tmp_path / "params.yaml").read_text() == (ROOT / params_file).read_text()


@pytest.fixture
def repo(tmp_path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    for item in ("conf", "src", "pipelines", "dvc.yaml", ".dvcignore", ".gitignore"):
        (shutil.copytree if (ROOT / item).is_dir() else shutil.copy)(ROOT / item, r / item)
    sh("git", "init", "-q", cwd=r)
    sh("dvc", "init", "-q", cwd=r)
    sh("dvc", "config", "hydra.enabled", "true", cwd=r)
    sh("dvc", "config", "core.analytics", "false", cwd=r)
    sh("cnnlab", "params", *TINY, cwd=r)
    sh("git", "add", "-A", cwd=r)
    sh("git", "commit", "-qm", "init", cwd=r)
    return r


def ran(out: str) -> set[str]:
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")}


@pytest.mark.slow
def test_repro_noop_partial_rerun_experiments_and_remote(repo, tmp_path):
    out = sh("dvc", "repro", cwd=repo)
    assert ran(out) == {"prepare", "train", "train-transfer", "evaluate", "evaluate-transfer", "style", "report"}
    params = yaml.safe_load((repo / "params.yaml").read_text())
    scratch, transfer = params["run_name"], params["runs"]["transfer"]["run_name"]
    for run in (scratch, transfer):
        assert json.loads((repo / f"reports/{run}/eval/metrics.json").read_text())["num_samples"] == 200
    page = (repo / "reports/index.html").read_text()
    assert scratch in page and transfer in page and "data:image/png;base64," in page
    assert "Neural style transfer" in page and "astronaut_immunohistochemistry" in page

    assert "Data and pipelines are up to date" in sh("dvc", "repro", cwd=repo)  # nothing changed: no-op

    sh("cnnlab", "params", *TINY, "optimizer.lr=0.002", cwd=repo)  # one model's learning rate
    assert ran(sh("dvc", "repro", cwd=repo)) == {"train", "evaluate", "report"}

    metrics_json = sh("dvc", "metrics", "show", "--json", cwd=repo)
    assert f"reports/{scratch}/eval/metrics.json" in metrics_json

    # an experiment: DVC composes conf/ + -S overrides into params.yaml itself (Hydra composition)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "baseline", cwd=repo)
    sh("dvc", "exp", "run", *[a for o in TINY for a in ("-S", o)], "-S", "optimizer.lr=0.003", cwd=repo)
    assert yaml.safe_load((repo / "params.yaml").read_text())["optimizer"]["lr"] == 0.003
    table = sh("dvc", "exp", "show", "--csv", cwd=repo)
    assert "optimizer.lr" in table and "0.003" in table and "accuracy" in table

    # the remote round trip: push outputs to a local-directory remote, pull them into a fresh clone
    sh("dvc", "remote", "add", "-d", "store", str(tmp_path / "remote"), cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "results", cwd=repo)
    sh("dvc", "push", "dvc.yaml", cwd=repo)
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path)
    sh("dvc", "pull", "dvc.yaml", cwd=clone)  # the default pipeline (the study never ran here)
    for out in (f"models/{scratch}/best.ckpt", f"models/{transfer}/best.ckpt", "data/prepared/synthetic/train.safetensors"):
        assert (clone / out).read_bytes() == (repo / out).read_bytes()
    assert "Data and pipelines are up to date" in sh("dvc", "repro", cwd=clone)


@pytest.mark.slow
def test_cifar10_study_runs_on_synthetic_data(repo):
    """pipelines/cifar10 reuses the stages with its own params file; tiny synthetic stand-in for CIFAR-10."""
    sh("cnnlab", "params", *STUDY, *TINY, "data.channels=3", "data.image_size=32", "trainer=cpu",
       "train.batch_size=64", "runs.transfer.train.batch_size=32", cwd=repo)
    out = sh("dvc", "repro", "pipelines/cifar10/dvc.yaml", cwd=repo)
    assert "Running stage 'pipelines/cifar10/dvc.yaml:report'" in out
    study = yaml.safe_load((repo / "pipelines/cifar10/params.yaml").read_text())
    assert study["model"]["name"] == "seed_cifar_cnn" and study["paths"]["reports_dir"] == "reports/cifar10"
    run = study["run_name"]
    assert json.loads((repo / f"reports/cifar10/{run}/eval/metrics.json").read_text())["num_samples"] == 200
    assert (repo / "reports/cifar10/index.html").is_file() and not (repo / "reports/index.html").exists()

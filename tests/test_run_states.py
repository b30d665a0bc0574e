"""MLflow run states and refusals at the edges: a kill -9'd sweep's runs closed by the next session of its
study, a refused study session or a corrupt store leaving no run RUNNING, a finished run extended on resume,
a refused out_dir costing no style work."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import CNNLAB, run_cli
from mlflow import MlflowClient
from mlflow.entities import ViewType

from cnnlab.config import compose
from cnnlab.stages import prepare, train

SEARCH = ["debug=tiny", "train.batch_size=100", "hparams_search=optuna", "hydra/sweeper/pruner=none",
          "trainer.max_epochs=50"]  # long trials: the sweep is killed in its first


def runs(d: Path) -> dict[str, object]:
    """Every run of the project's store in `d`, deleted ones too: {run name: run}."""
    client = MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cnnlab")
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)}


def one_line_error(p: subprocess.CompletedProcess, *words: str) -> str:
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def running_trial(db: Path) -> bool:
    """Whether a sweep's job has its MLflow run (read with sqlite3: MLflow's client would make the store)."""
    try:
        with sqlite3.connect(db, timeout=10) as c:
            return bool(c.execute("SELECT 1 FROM runs JOIN tags USING (run_uuid) WHERE "
                                  "tags.key = 'mlflow.parentRunId' AND status = 'RUNNING'").fetchall())
    except sqlite3.Error:  # not made yet
        return False


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A folder with prepared synthetic data, where the CLI tests run."""
    d = tmp_path_factory.mktemp("project")
    here = Path.cwd()
    os.chdir(d)
    try:
        prepare.run(compose(["data=synthetic", "out_dir=out"]))
    finally:
        os.chdir(here)
    return d


@pytest.fixture(scope="module")
def killed_then_rerun(project) -> tuple[dict, dict]:
    """A study sweep killed (-9, the whole process group) in its first trial, then the same study run again
    (n_trials=0: it only recovers): the MLflow runs after the kill and after the rerun."""
    proc = subprocess.Popen([CNNLAB, "train", *SEARCH, "hydra.sweeper.n_trials=1"], cwd=project,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not running_trial(project / "mlflow.db") and time.time() < deadline and proc.poll() is None:
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = runs(project)
    run_cli("train", *SEARCH, "hydra.sweeper.n_trials=0", cwd=project)
    return killed, runs(project)


def test_a_kill_9_sweeps_runs_are_closed_as_killed_by_the_next_session(killed_then_rerun):
    killed, after = killed_then_rerun
    assert sorted(r.info.status for r in killed.values()) == ["RUNNING", "RUNNING"]  # parent and trial
    assert {name: after[name].info.status for name in killed} == {name: "KILLED" for name in killed}
    [new] = set(after) - set(killed)  # this session's parent, which ran no trial
    assert after[new].info.status == "FINISHED"


def test_a_refused_study_session_leaves_no_run(project, killed_then_rerun):
    before = runs(project)
    p = run_cli("train", *SEARCH, "hydra.sweeper.n_trials=1", "train.label_smoothing=0.1", cwd=project,
                check=False)
    one_line_error(p, "ran with other settings")
    assert runs(project).keys() == before.keys()  # not even a deleted one


def test_a_corrupt_optuna_db_is_one_line_and_leaves_no_run(project, killed_then_rerun, tmp_path):
    (bad := tmp_path / "optuna.db").write_bytes(b"\x13garbage" * 512)
    before = runs(project)
    p = run_cli("train", *SEARCH, f"hydra.sweeper.storage={bad}", cwd=project, check=False)
    one_line_error(p, str(bad), "not a readable SQLite database", "hydra.sweeper.storage")
    assert runs(project).keys() == before.keys()


def test_a_corrupt_mlflow_db_is_one_line_not_an_untracked_run(project, tmp_path):
    (bad := tmp_path / "mlflow.db").write_bytes(b"\x13garbage" * 512)
    p = run_cli("train", "debug=tiny", f"tracking.uri=sqlite:///{bad}", f"out_dir={tmp_path / 'run'}",
                cwd=project, check=False)
    one_line_error(p, str(bad), "not a readable SQLite database", "tracking.enabled=false")
    assert not (tmp_path / "run/model").exists()


def test_extending_a_finished_run_keeps_one_mlflow_run(cfg, synthetic, workdir):
    """2 epochs, then resume=true with 3: the same MLflow run goes on, logging epoch 3; the param it started
    with stays (MLflow refuses a change), the new value is a tag."""
    tiny = ["debug=tiny", "scheduler=cosine", "out_dir=r"]
    train.run(cfg(*tiny, "trainer.max_epochs=2"))
    train.run(cfg(*tiny, "trainer.max_epochs=3", "resume=true"))
    [run] = runs(workdir).values()
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.max_epochs"] == "2"
    assert run.data.tags["resumed_with.trainer.max_epochs"] == "3"
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 3  # epoch 3 logged too


def test_extending_a_onecycle_run_follows_the_longer_schedule(cfg, synthetic):
    tiny = ["debug=tiny", "scheduler=onecycle", "out_dir=r", "tracking.enabled=false"]
    train.run(cfg(*tiny, "trainer.max_epochs=2"))
    train.run(cfg(*tiny, "trainer.max_epochs=3", "resume=true"))  # was: "Tried to step 17 times"
    assert len(Path("r/train/history.csv").read_text().splitlines()) == 1 + 3


def test_style_refuses_a_foreign_out_dir_before_its_work(tmp_path):
    (foreign := tmp_path / "photos").mkdir()
    (foreign / "holiday.jpg").write_bytes(b"mine")
    p = run_cli("style", "style.size=32", "style.iterations=2", f"out_dir={foreign}", check=False)
    one_line_error(p, "is not a cnnlab folder")
    assert "evaluation" not in p.stdout  # no optimisation ran first
    assert [f.name for f in foreign.iterdir()] == ["holiday.jpg"]

"""Optuna studies through the real CLI (`hparams_search=optuna`): persisted in SQLite, continued by the
same command, recovered after a kill -9, pruned trials recorded as PRUNED (study and MLflow), with the basic
and the joblib launcher and ddp_spawn."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from conftest import CNNLAB
from mlflow import MlflowClient

from cnnlab import study

SEARCH = ["debug=tiny", "train.batch_size=100", "hparams_search=optuna", "trainer.max_epochs=2"]
# A pruner that stops every trial at its first report (val/acc never reaches 1.01): pruning made certain
NEVER_GOOD_ENOUGH = ["hydra/sweeper/pruner=none",
                     "+hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
                     "+hydra.sweeper.pruner.lower=1.01"]
NAME = "seed_mnist_cnn-synthetic"  # the default study_name: ${run_name}


def load(workdir: Path, name: str = NAME) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'optuna.db'}")


def mlflow_runs(workdir: Path) -> list:
    client = MlflowClient(f"sqlite:///{(workdir / 'mlflow.db').resolve()}")
    return client.search_runs([client.get_experiment_by_name("cnnlab").experiment_id])


def test_search_space_reads_hydra_sweep_syntax():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space, fixed = study.search_space({"a": "tag(log, interval(1e-4, 1e-1))", "b": "int(interval(0, 10))",
                                       "c": "range(8, 33, 8)", "d": "choice(64, 128)",
                                       "e": "choice([8,16],[16,32])", "f": "0.5"})
    assert space["a"] == FloatDistribution(1e-4, 1e-1, log=True)
    assert space["b"] == IntDistribution(0, 10)
    assert space["c"] == IntDistribution(8, 32, step=8)  # range excludes its end, as in Python
    assert space["d"] == CategoricalDistribution([64, 128])
    assert space["e"] == CategoricalDistribution(["[8,16]", "[16,32]"])  # a list choice, as override text
    assert fixed == ["f=0.5"]


@pytest.mark.slow
def test_study_persists_continues_prunes_and_refuses_another_experiment(cli, workdir, synthetic):
    cli("train", *SEARCH, "hydra.sweeper.n_trials=3", "hydra/sweeper/pruner=none")
    s = load(workdir)
    assert [t.state.name for t in s.trials] == ["COMPLETE"] * 3
    [winner] = workdir.glob("runs/*/*-train-sweep/winner.json")
    tested = json.loads(winner.read_text())
    assert tested["winner_trial"] == s.best_trial.number
    eval_file = workdir / tested["run"] / "eval/metrics.json"
    first_eval = eval_file.stat().st_mtime_ns

    # the same command with a larger n_trials (the study's total) continues it; this session prunes
    out = cli("train", *SEARCH, "hydra.sweeper.n_trials=5", *NEVER_GOOD_ENOUGH).stdout
    s = load(workdir)
    assert [t.number for t in s.trials] == [0, 1, 2, 3, 4]  # numbers go on
    assert [t.state.name for t in s.trials[3:]] == ["PRUNED", "PRUNED"]
    assert all(list(t.intermediate_values) == [1] for t in s.trials[3:])  # stopped after epoch 1
    first = [t.params for t in s.trials[:3]]
    assert all(t.params not in first for t in s.trials[3:])  # the sampler did not replay session one
    assert "PRUNED" in out  # the leaderboard is the study's, all sessions
    tags = {r.data.tags.get("optuna_trial"): r.data.tags for r in mlflow_runs(workdir)}
    assert tags["3"]["optuna_state"] == "PRUNED" and tags["0"]["optuna_state"] == "COMPLETE"
    pruned = next(r for r in mlflow_runs(workdir) if r.data.tags.get("optuna_trial") == "4")
    assert "val/acc" in pruned.data.metrics  # its partial curve
    assert eval_file.stat().st_mtime_ns == first_eval  # the same winner is not tested twice

    # already complete: nothing to run, and it says how to extend
    p = cli("train", *SEARCH, "hydra.sweeper.n_trials=5")
    assert "raise hydra.sweeper.n_trials" in p.stdout + p.stderr
    # another experiment under the same name: refused in one line, nothing left behind
    sweeps = set(workdir.glob("runs/*/*-sweep"))
    parents = len(mlflow_runs(workdir))
    p = cli("train", *SEARCH, "hydra.sweeper.n_trials=6", "train.label_smoothing=0.1", check=False)
    assert p.returncode == 2 and "ran with other settings" in p.stderr and "Traceback" not in p.stderr
    assert set(workdir.glob("runs/*/*-sweep")) == sweeps and len(mlflow_runs(workdir)) == parents
    assert len(load(workdir).trials) == 5


@pytest.mark.slow
def test_grid_sampler_runs_the_whole_grid_then_tests_the_winner(cli, workdir, synthetic):
    """Optuna's GridSampler stops the study after the grid's last trial, which raised in an ask/tell loop:
    the sweep died at its last trial without testing its winner. Here with the fast recipe's budget search."""
    cli("train", "debug=tiny", "model=fast", "hparams_search=fast_cifar10", "model.net.init_images=100")
    s = load(workdir, "fast-synthetic")
    assert sorted((t.params["model.net.widths"], t.params["train.batch_size"]) for t in s.trials) == [
        ("[32,128,128]", 256), ("[32,128,128]", 1024), ("[48,192,192]", 256), ("[48,192,192]", 1024)]
    assert [t.state.name for t in s.trials] == ["COMPLETE"] * 4
    [winner] = workdir.glob("runs/*/*-train-sweep/winner.json")
    assert json.loads(winner.read_text())["test"]["accuracy"] > 0


@pytest.mark.slow
def test_kill_9_of_the_sweeper_then_rerun_continues_the_study(workdir, synthetic):
    command = [CNNLAB, "train", "debug=tiny", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
               "trainer.max_epochs=25", "hydra/sweeper/pruner=none", "tracking.enabled=false"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it mid-trial: once trial 0 has reported an epoch
        time.sleep(0.5)
        try:
            trials = load(workdir).trials
        except (KeyError, Exception):
            continue
        if trials and trials[0].intermediate_values:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert load(workdir).trials[0].state.name == "RUNNING"  # what a dead sweeper leaves

    subprocess.run(command, check=True, capture_output=True, timeout=300)
    trials = load(workdir).trials
    assert trials[0].state.name == "FAIL"  # marked, not lost silently
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].params == trials[0].params  # asked again
    assert [t.state.name for t in trials[1:]] == ["COMPLETE", "COMPLETE"]


@pytest.mark.slow
def test_joblib_parallel_pruned_sweep_records_every_trial(cli, workdir, synthetic):
    p = cli("train", *SEARCH, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2", *NEVER_GOOD_ENOUGH)
    assert "Warning" not in p.stderr, p.stderr  # the jobs' processes are as quiet as the basic launcher's
    trials = load(workdir).trials
    assert len(trials) == 4 and {t.state.name for t in trials} == {"PRUNED"}
    assert all(t.intermediate_values for t in trials)  # every job reported through the shared SQLite file
    runs = [r for r in mlflow_runs(workdir) if "optuna_trial" in r.data.tags]
    assert sorted(r.data.tags["optuna_trial"] for r in runs) == ["0", "1", "2", "3"]
    assert {r.data.tags["optuna_state"] for r in runs} == {"PRUNED"}
    assert all("val/acc" in r.data.metrics for r in runs)  # parallel writers, one SQLite file: no "locked"
    assert sorted(r.info.run_name for r in runs)[0] == f"{NAME}/trial0"


@pytest.mark.slow
def test_ddp_spawn_trial_is_pruned_on_every_rank(cli, workdir, synthetic):
    cli("train", *SEARCH, "trainer=ddp_cpu", "trainer.strategy=ddp_spawn", "hydra.sweeper.n_trials=1",
        "tracking.enabled=false", *NEVER_GOOD_ENOUGH, timeout=300)
    [trial] = load(workdir).trials
    assert trial.state.name == "PRUNED" and list(trial.intermediate_values) == [1]


def test_optuna_dashboard_serves_a_study_offline(workdir):
    import socket
    import urllib.request

    optuna.create_study(study_name="look", storage=f"sqlite:///{workdir / 'optuna.db'}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dashboard = str(Path(CNNLAB).with_name("optuna-dashboard"))
    proc = subprocess.Popen([dashboard, f"sqlite:///{workdir / 'optuna.db'}", "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(60):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    assert "look" in r.read().decode()
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("optuna-dashboard did not answer")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard/", timeout=5) as r:
            assert 'src="/static/' in r.read().decode()  # its scripts are its own: no CDN
    finally:
        proc.terminate()
        proc.wait(timeout=10)

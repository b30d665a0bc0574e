"""MLflow against a real `mlflow server` on 127.0.0.1, and a run whose server is gone."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from cnnlab.stages import prepare


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", str(tmp_path / "server-artifacts")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("mlflow server did not start")
            time.sleep(0.5)
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.slow
def test_train_and_evaluate_against_real_server(cli, cfg, workdir, mlflow_server):
    prepare.run(cfg("data=synthetic"))
    args = ["data=synthetic", "trainer.max_epochs=2", f"tracking.uri={mlflow_server}", "out_dir=out"]
    cli("train", *args)
    cli("evaluate", *args)
    assert not (workdir / "mlflow.db").exists()  # nothing went to the local store
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("cnnlab").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.max_epochs"] == "2"
    assert "test/accuracy" in run.data.metrics and "val/acc" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"config.yaml", "checkpoints", "eval"}


def test_unreachable_server_still_completes_with_warning(cli, cfg, workdir):
    prepare.run(cfg("data=synthetic"))
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    args = ["data=synthetic", "trainer.max_epochs=1", f"tracking.uri={dead}", "out_dir=out"]
    p = cli("train", *args)
    assert "unreachable" in p.stderr + p.stdout and "not tracked" in p.stderr + p.stdout
    p = cli("evaluate", *args)
    assert "not logged" in p.stderr + p.stdout
    rep = workdir / "out"
    assert json.loads((rep / "eval/metrics.json").read_text())["num_samples"] == 200
    assert (rep / "train/history.csv").is_file()

"""Hostile inputs, round two, through the real CLI: a registered model is loaded as data (its checkpoint), the
config calls only what conf/ builds, and every other mistake is exit code 2 and one line, refused before
Hydra writes a run folder or a sweep's first job starts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import refused, run_cli, snapshot

TINY = ["debug=tiny", "tracking.enabled=false"]




# Someone else's registered model, whose unpickling creates the file sys.argv[2]: logged in a process of
# its own (MLflow's active experiment and run are process-wide state).
EVIL = """
import sys, mlflow, torch

class Evil(torch.nn.Module):
    def __reduce__(self):
        return (open, (sys.argv[2], "w"))

mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment("someone-else")
with mlflow.start_run():
    info = mlflow.pytorch.log_model(Evil(), name="model", serialization_format="pickle",
                                    pip_requirements=["torch"],  # no inference: it would load the model
                                    metadata={"classes": list("0123456789"), "in_shape": [1, 28, 28]})
version = mlflow.register_model(info.model_uri, "evil").version
mlflow.MlflowClient().set_registered_model_alias("evil", "x", version)
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """Prepared data, one good run (good/) exported to ONNX and registered as models:/good@champion, a model
    logged with pickle as models:/evil@x, and bad files to hand the CLI."""
    d = tmp_path_factory.mktemp("hostile_inputs")
    uri = f"tracking.uri=sqlite:///{d / 'mlflow.db'}"
    run_cli("prepare", "data=synthetic", cwd=d)
    run_cli("prepare", "data=synthetic", "data.name=synthetic16", "data.image_size=16", cwd=d)
    run_cli("train", "debug=tiny", uri, "out_dir=good", cwd=d)
    run_cli("evaluate", "debug=tiny", uri, "out_dir=good", "evaluate.gradcam=0",
            "tracking.registered_model=good", cwd=d)
    run_cli("export", "data=synthetic", "tracking.enabled=false", "out_dir=good", "export.formats=[onnx]",
            "export.check_images=16", cwd=d)
    for name, content in (("garbage", b"not an onnx model"),
                          ("truncated", (d / "good/export/model.onnx").read_bytes()[:3000])):
        (d / name).mkdir()
        (d / name / "model.onnx").write_bytes(content)
        shutil.copy(d / "good/export/model.json", d / name)
    ckpt = torch.load(d / "good/model/best.ckpt", weights_only=True)
    for name, change in (("mean", {"mean": [0.5, 0.5, 0.5]}), ("huge", {"in_shape": [3, 100000, 100000]}),
                         ("env", {"net": {**ckpt["hyper_parameters"]["net"], "hidden": "${oc.env:HOME}"}})):
        torch.save({**ckpt, "hyper_parameters": {**ckpt["hyper_parameters"], **change}}, d / f"{name}.ckpt")

    subprocess.run([sys.executable, "-c", EVIL, uri.split("=", 1)[1], str(d / "pwned")], check=True,
                   capture_output=True)
    assert not (d / "pwned").exists()  # logging it ran nothing
    run_cli("params", "data=synthetic", cwd=d)
    (d / "victim.txt").write_text("keep me\n")
    return d


def _refused(project: Path, args: list[str], says: str) -> str:
    """Exit 2, one line naming what is wrong, no traceback; no file of the project changed, nothing new in
    runs/ (Hydra's folder), no payload run."""
    runs, before = project / "runs", snapshot(project / "good", project / "data")
    folders = set(runs.rglob("*")) if runs.exists() else set()
    line = refused(args, says, cwd=project)
    assert snapshot(project / "good", project / "data") == before
    assert (set(runs.rglob("*")) if runs.exists() else set()) == folders
    assert (project / "victim.txt").read_text() == "keep me\n"
    assert not (project / "pwned").exists()
    return line


def uri(project: Path) -> str:
    return f"tracking.uri=sqlite:///{project / 'mlflow.db'}"


REFUSED = "holds no cnnlab checkpoint"
EVAL = ["data=synthetic", "out_dir=e", "tracking.enabled=false"]
IMAGES = "predict.image=good/eval/figures"
CASES = [  # (command line, what the one line must say); {uri}: the project's MLflow store
    # 1. a registered model that is not cnnlab's checkpoint is never loaded
    (["predict", "predict.ckpt=models:/evil@x", "predict.image=good/eval/figures", "{uri}"], REFUSED),
    (["evaluate", "data=synthetic", "evaluate.ckpt=models:/evil@x", "out_dir=e", "{uri}"], REFUSED),
    (["export", "data=synthetic", "export.source=models:/evil@x", "out_dir=x", "{uri}"], REFUSED),
    # 2. the config builds only what conf/ builds
    (["train", *TINY, "+scheduler._target_=builtins.open", "+scheduler.file=victim.txt", "+scheduler.mode=w"],
     "scheduler._target_='builtins.open': must be in cnnlab.tasks.schedules"),
    (["train", "--params", "params.yaml", "+scheduler._target_=builtins.open", "+scheduler.file=victim.txt",
      "+scheduler.mode=w", "out_dir=good"], "scheduler._target_='builtins.open'"),
    (["train", *TINY, "optimizer._target_=builtins.print"], "optimizer._target_='builtins.print'"),
    (["train", *TINY, "+optimizer.x._target_=builtins.print"], "optimizer.x._target_"),
    (["train", *TINY, "+model.net._args_=[1]"], "model.net._args_=[1]: not allowed"),
    # 3. one line instead of a traceback
    (["train", "--params", "/etc/passwd"], "not a config composed from conf/"),
    (["train", *TINY, "~train.batch_size"], "~train.batch_size: cnnlab reads every key"),
    (["predict", "predict.ckpt=garbage/model.onnx", IMAGES],
     "garbage/model.onnx is not a valid ONNX model"),
    (["evaluate", *EVAL, "evaluate.ckpt=truncated/model.onnx"], "truncated/model.onnx is not a valid ONNX"),
    (["evaluate", *EVAL, "evaluate.ckpt=mean.ckpt"], "mean [0.5, 0.5, 0.5]: must be 1"),
    (["predict", "predict.ckpt=huge.ckpt", IMAGES], "in_shape [3, 100000, 100000]"),
    (["evaluate", *EVAL, "evaluate.ckpt=env.ckpt"], "hyper_parameters.net.hidden holds an interpolation"),
    (["export", "data=synthetic", "data.name=synthetic16", "data.image_size=16", "out_dir=good",
      "tracking.enabled=false"], "model was built for 1×28×28 inputs, data has 1×16×16"),
    (["train", "-m", *TINY, "optimizer.lr=1e-3,abc"], "optimizer.lr='abc': must be a number > 0"),
    (["train", "-m", *TINY, "trainer=ddp_cpu", "optimizer.lr=1e-3"], "strategy=ddp inside a multirun"),
    (["train", *TINY, "data.name=café"], "quote it"),
    (["train", "--debug", *TINY, "optimizer.lr=abc", "out_dir=x"], "optimizer.lr='abc'"),
    # 4. a registered model's name is a name
    (["evaluate", "data=synthetic", "out_dir=good", "tracking.registered_model=../../x", "{uri}"],
     "tracking.registered_model='../../x': must be null or a name, not a path"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args, says", CASES,
                         ids=[" ".join(a).replace(" ".join(TINY), "…")[:70] for a, _ in CASES])
def test_refused_in_one_line_before_anything_runs(project, args, says):
    _refused(project, [a.replace("{uri}", uri(project)) for a in args], says)


@pytest.mark.slow
def test_a_registered_cnnlab_model_still_predicts_evaluates_and_exports(project):
    source = ["predict.ckpt=models:/good@champion", uri(project)]
    printed = run_cli("predict", *source, "predict.image=good/eval/figures", "predict.top_k=1", cwd=project)
    assert printed.stdout.count("predictions.png: ") == 1
    run_cli("evaluate", "data=synthetic", "evaluate.ckpt=models:/good@champion", "evaluate.gradcam=0",
            "out_dir=from_registry", uri(project), cwd=project)
    ckpt = json.loads((project / "good/eval/metrics.json").read_text())["accuracy"]
    assert json.loads((project / "from_registry/eval/metrics.json").read_text())["accuracy"] == ckpt
    run_cli("export", "data=synthetic", "export.source=models:/good@champion", "export.formats=[onnx]",
            "export.check_images=16", "out_dir=from_registry", uri(project), cwd=project)
    meta = json.loads((project / "from_registry/export/model.json").read_text())
    assert meta["source"] == "models:/good@champion" and meta["check"]["onnx"]["top1_agreement"] == 1

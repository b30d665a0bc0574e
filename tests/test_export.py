"""The model lifecycle: export (ONNX + torch.export, checked against PyTorch), the MLflow Model Registry with
an alias, evaluate/predict from every model source, serving with `mlflow models serve`, prediction files."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from cnnlab.data.augment import tta_logits
from cnnlab.data.prepared import load_split
from cnnlab.errors import UserError
from cnnlab.evaluation.inference import open_model, predict_logits
from cnnlab.export import ExportNet, export
from cnnlab.stages import evaluate, predict, train
from cnnlab.stages import export as export_stage
from cnnlab.tasks.classifier import Classifier
from cnnlab.tracking import tracking_uri

TINY = ["debug=tiny", "trainer.max_epochs=1"]
FAMILIES = {  # one tiny model of each family cnnlab trains
    "seed": ["model=seed_mnist_cnn"],
    "builder": ["model=cnn", "model.net.widths=[8,16,16]"],
    "fast": ["model=fast", "model.net.widths=[8,16,16]"],
    "lite0": ["model=efficientnet_lite0", "model.net.image_size=32", "train.per_class=10"],
}


@pytest.mark.parametrize("family", FAMILIES)
def test_export_of_each_family_passes_its_own_check(cfg, workdir, synthetic, family):
    c = cfg(*TINY, *FAMILIES[family], "tracking.enabled=false", "export.check_images=64")
    train.run(c)
    info = export_stage.run(c)
    folder = workdir / "out/export"
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.onnx", "model.pt2"]
    assert json.loads((folder / "model.json").read_text()) == info
    for fmt in ("onnx", "pt2"):  # each format matched PyTorch on real test images, top-1 on every one
        assert info["check"][fmt]["max_abs_logit_diff"] <= 1e-4 and info["check"][fmt]["top1_agreement"] == 1
    assert info["input"] == {"name": "images", "shape": [None, 1, 28, 28], "dtype": "uint8",
                             "range": [0, 255], "layout": "NCHW, grayscale"}  # 1 channel: not RGB
    # the batch dimension is dynamic, the preprocessing inside: raw uint8 images of any batch size
    images = load_split(workdir / "data/prepared/synthetic", "test").images[:5]
    model = Classifier.load(workdir / "out/model/best.ckpt")
    with torch.inference_mode():
        expected = model(model.preprocess(images))
        got = torch.export.load(str(folder / "model.pt2")).module()(images)
        views = tta_logits(model, model.preprocess(images))  # TTA's shifts and mirrors of normalised images
    assert torch.allclose(got, expected, atol=1e-4)
    # TTA from the export: views of the uint8 images, which per-pixel normalisation commutes with
    onnx = open_model(folder / "model.onnx", torch.device("cpu"))
    assert torch.allclose(predict_logits(model, images, 2, tta=True), views, atol=1e-5)  # batch 2 vs 5
    assert torch.allclose(predict_logits(onnx, images, 2, tta=True), views, atol=1e-4)


def test_a_broken_export_is_caught_and_leaves_no_file(workdir):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    images = torch.randint(0, 256, (32, 1, 12, 12), dtype=torch.uint8)
    wrong = ExportNet(net, [0.0], [1.0], uint8=True)  # what a model trained with mean 0.5, std 0.25 is not
    with pytest.raises(UserError, match="export check failed"):
        export(net, [0.5], [0.25], images, workdir / "export", {"classes": ["a", "b", "c"]}, reference=wrong)
    assert not (workdir / "export").exists() and not list(workdir.iterdir())


@pytest.mark.slow
def test_registry_alias_and_every_model_source_agree(cfg, workdir, synthetic):
    c = cfg(*TINY)
    train.run(c)
    export_stage.run(c)
    register = ["tracking.registered_model=tiny", "tracking.alias_if_better=test/accuracy"]
    metrics = evaluate.run(cfg(*TINY, *register))
    client = MlflowClient(tracking_uri(c))
    run_id = json.loads((workdir / "out/model/run.json").read_text())["mlflow_run_id"]
    assert {Path(a.path).name for a in client.list_artifacts(run_id, "export")} == {
        "model.json", "model.onnx", "model.pt2"}  # the export, logged with the run
    v = client.get_model_version_by_alias("tiny", "champion")
    assert str(v.version) == "1" and float(v.tags["test/accuracy"]) == metrics["accuracy"]
    assert v.tags["data_hash"] and v.tags["git_sha"] and v.tags["mlflow_run_id"]

    # a worse version is registered, but the alias stays where the better one is
    c2 = cfg(*TINY, "out_dir=worse", "optimizer.lr=1e-6")
    train.run(c2)
    evaluate.run(cfg(*TINY, "out_dir=worse", "optimizer.lr=1e-6", *register))
    assert len(client.search_model_versions("name='tiny'")) == 2
    assert str(client.get_model_version_by_alias("tiny", "champion").version) == "1"

    # the same top-1 from the checkpoint, the .onnx and the registry, for evaluate and for predict
    sources = {"ckpt": "out/model/best.ckpt", "onnx": "out/export/model.onnx",
               "registry": "models:/tiny@champion"}
    accuracy = {k: evaluate.run(cfg(*TINY, f"out_dir=eval_{k}", f"evaluate.ckpt={s}", "evaluate.gradcam=0"))
                ["accuracy"] for k, s in sources.items()}
    assert len(set(accuracy.values())) == 1, accuracy
    folder = _images(workdir)
    top1 = {k: {f: r[0]["class"] for f, r in predict.run(cfg(f"predict.ckpt={s}", f"predict.image={folder}"))
                .items()} for k, s in sources.items()}
    assert top1["ckpt"] == top1["onnx"] == top1["registry"]
    # and the registered model exports too (its network normalises itself)
    info = export_stage.run(cfg(*TINY, "out_dir=from_registry", "export.source=models:/tiny@champion"))
    assert info["check"]["onnx"]["top1_agreement"] == 1 and info["source"] == "models:/tiny@champion"


def _images(workdir: Path, n: int = 12) -> Path:
    """Test images as PNG files, as a user would have them."""
    folder = workdir / "images"
    folder.mkdir(exist_ok=True)
    for i, im in enumerate(load_split(workdir / "data/prepared/synthetic", "test").images[:n]):
        Image.fromarray(im[0].numpy()).save(folder / f"{i:02d}.png")
    return folder


def test_predict_writes_csv_and_json(cfg, workdir, synthetic):
    train.run(cfg(*TINY, "tracking.enabled=false"))
    folder = _images(workdir, 5)
    base = ["predict.ckpt=out/model/best.ckpt", f"predict.image={folder}", "predict.top_k=2",
            "predict.batch_size=2"]  # three batches
    printed = predict.run(cfg(*base))
    predict.run(cfg(*base, "predict.output=p.csv"))
    predict.run(cfg(*base, "predict.output=p.json"))
    with open(workdir / "p.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == sorted(printed) and list(rows[0]) == ["file", "class_1", "prob_1",
                                                                              "class_2", "prob_2"]
    assert json.loads((workdir / "p.json").read_text()) == printed
    with pytest.raises(UserError, match=r"\.csv or \.json"):
        predict.run(cfg(*base, "predict.output=p.txt"))


@pytest.mark.slow
def test_mlflow_serves_the_registered_model_offline(cfg, cli, workdir, synthetic):
    train.run(cfg(*TINY))
    evaluate.run(cfg(*TINY, "tracking.registered_model=tiny", "evaluate.gradcam=0"))
    folder = _images(workdir)
    printed = cli("predict", "predict.ckpt=models:/tiny@champion", f"predict.image={folder}",
                  "predict.top_k=1", "predict.output=p.json")
    assert printed.returncode == 0
    expected = [r[0]["class"] for _, r in sorted(json.loads((workdir / "p.json").read_text()).items())]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": tracking_uri(cfg())}
    proc = subprocess.Popen([f"{bin_dir}/mlflow", "models", "serve", "-m", "models:/tiny@champion",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        # the served model takes float images in [0, 1], [B, C, H, W] (its signature)
        x = np.stack([np.array(Image.open(f))[None] for f in sorted(folder.iterdir())])
        x = x.astype("float32") / 255
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                     data=json.dumps({"inputs": x.tolist()}).encode(),
                                     headers={"Content-Type": "application/json"})
        logits = np.array(json.loads(urllib.request.urlopen(req, timeout=30).read())["predictions"])
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    names = json.loads((workdir / "data/prepared/synthetic/manifest.json").read_text())["classes"]
    assert [names[i] for i in logits.argmax(1)] == expected

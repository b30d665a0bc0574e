"""The record a researcher trusts: an ad-hoc evaluation never rewrites the run it evaluates, TTA uses only the
views a model was trained for, and the report and `cnnlab compare` show each run against its own baseline."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from PIL import Image

from cnnlab.data.augment import tta_logits
from cnnlab.data.prepared import load_split
from cnnlab.io import write_json
from cnnlab.paths import RunDir
from cnnlab.stages import compare, evaluate, report, train
from cnnlab.tasks.classifier import Classifier
from cnnlab.tracking import experiment_id, flatten, tracking_uri

TINY = ["debug=tiny", "evaluate.gradcam=0"]


def test_an_ad_hoc_evaluation_never_rewrites_the_run_it_evaluates(cfg, workdir, synthetic, caplog):
    c = cfg(*TINY)
    train.run(c)
    own = evaluate.run(c)
    elsewhere = evaluate.run(cfg(*TINY, "out_dir=adhoc", "evaluate.ckpt=out/model/best.ckpt",
                                 "evaluate.tta=true"))
    with caplog.at_level(logging.WARNING):
        here = evaluate.run(cfg(*TINY, "evaluate.tta=true"))  # in the run's own folder
    # trained without flips or crops: no view applies, the figure is the plain one and TTA's is beside it
    assert here["tta_views"] == "none" and here["accuracy"] == own["accuracy"] and "tta_accuracy" in here
    assert "no test-time view applies" in caplog.text

    client = MlflowClient(tracking_uri(c))
    run_id = json.loads((workdir / "out/model/run.json").read_text())["mlflow_run_id"]
    assert [m.value for m in client.get_metric_history(run_id, "test/accuracy")] == [own["accuracy"]]
    assert json.loads((workdir / "out/eval/metrics.json").read_text())["accuracy"] == own["accuracy"]
    assert json.loads((workdir / "out/eval-tta/metrics.json").read_text()) == {
        k: v for k, v in here.items() if k != "per_class_accuracy"}
    evals = {r.info.run_name: r for r in client.search_runs([experiment_id(c, tracking_uri(c))],
                                                            f"tags.evaluates = '{run_id}'")}
    assert sorted(evals) == ["eval:tta", "eval:tta, adhoc"]
    assert all(r.data.tags["mlflow.parentRunId"] == run_id for r in evals.values())
    assert evals["eval:tta, adhoc"].data.metrics["test/accuracy"] == pytest.approx(elsewhere["accuracy"])
    assert evals["eval:tta"].data.metrics["test/tta_accuracy"] == pytest.approx(here["tta_accuracy"])


def test_tta_uses_only_the_views_the_model_was_trained_for(cfg, workdir, synthetic):
    c = cfg(*TINY, "train.augment.flip=true")
    train.run(c)
    m = evaluate.run(cfg(*TINY, "train.augment.flip=true", "evaluate.tta=true"))
    model = Classifier.load(workdir / "out/model/best.ckpt")
    test = load_split(workdir / "data/prepared/synthetic", "test")
    with torch.inference_mode():
        mirrored = tta_logits(model.logits, test.images, mirror=True, shift=False)
        plain = model.logits(test.images)
    assert m["tta_views"] == "mirror"
    assert m["accuracy"] == pytest.approx((mirrored.argmax(1) == test.labels).float().mean().item())
    assert m["plain_accuracy"] == pytest.approx((plain.argmax(1) == test.labels).float().mean().item())


def _experiments(cfg, workdir) -> dict[str, str]:
    """Training runs as cnnlab records them (the flattened resolved config as params): a DVC experiment, a
    run by hand with another model, two jobs of an Optuna sweep (one pruned). Returns {name: run id}."""
    c = cfg("out_dir=page")
    client = MlflowClient(tracking_uri(c))
    exp = experiment_id(c, tracking_uri(c))
    by_hand = {"out_dir": str(workdir / "runs/2026-11-27/10-00-00-train")}
    runs = {"happy-fox:seed_mnist_cnn-fashion_mnist": ("optimizer.lr=0.003", {"dvc_exp_name": "happy-fox"}),
            "cnn-fashion_mnist": ("model=cnn", by_hand),
            "seed_mnist_cnn-fashion_mnist/trial0": ("optimizer.lr=0.01", {"sweep_id": "s1"}),
            "seed_mnist_cnn-fashion_mnist/trial1": ("optimizer.lr=0.1", {"sweep_id": "s1",
                                                                          "optuna_state": "PRUNED"})}
    ids = {}
    for name, (override, tags) in runs.items():
        r = client.create_run(exp, run_name=name, tags={"data_hash": "abc", **tags})
        params = [Param(k, str(v)) for k, v in flatten(cfg(override)).items()]
        for i in range(0, len(params), 100):
            client.log_batch(r.info.run_id, params=params[i:i + 100])
        client.log_batch(r.info.run_id, metrics=[Metric("val/acc", v, 0, e) for e, v in
                                                 enumerate((0.5, 0.8, 0.7))] + [
            Metric("test/accuracy", 0.6244000196456909, 0, 0)])
        client.set_terminated(r.info.run_id, "FINISHED", end_time=r.info.start_time + 573_550)
        ids[name] = r.info.run_id
    return ids


def test_report_shows_each_run_against_its_own_baseline(cfg, workdir):
    _experiments(cfg, workdir)
    report.run(cfg("out_dir=page"))
    page = (workdir / "page/index.html").read_text()
    section = page.split("<h2>Experiments</h2>")[1]
    rows = {r.split("</td>")[0].removeprefix("<td>"): r for r in section.split("<tr>")[2:]}
    assert rows.keys() == {"happy-fox:seed_mnist_cnn-fashion_mnist", "cnn-fashion_mnist (10-00-00-train)",
                           "seed_mnist_cnn-fashion_mnist/trial0", "seed_mnist_cnn-fashion_mnist/trial1"}
    changes = {name: row.split("</td><td>")[4] for name, row in rows.items()}
    assert changes == {"happy-fox:seed_mnist_cnn-fashion_mnist": "optimizer.lr=0.003",
                       "cnn-fashion_mnist (10-00-00-train)": "model=cnn",  # not its every net key
                       "seed_mnist_cnn-fashion_mnist/trial0": "optimizer.lr=0.01",  # against its sweep's jobs
                       "seed_mnist_cnn-fashion_mnist/trial1": "optimizer.lr=0.1"}
    assert "<td>pruned</td>" in rows["seed_mnist_cnn-fashion_mnist/trial1"]
    assert all("<td>80.00 %</td><td>62.44 %</td>" in row and "<td>574</td>" in row for row in rows.values())
    assert "0.6244000196456909" not in page and '<div class="scroll"><table>' in section


def test_compare_fits_120_columns(cfg, workdir, capsys):
    ids = _experiments(cfg, workdir)
    out = compare.run(cfg())
    text = capsys.readouterr().out
    assert max(map(len, text.splitlines())) <= 120
    assert "lr=0.003" in text and "model=cnn" in text and "pruned" in text and "80.00 %" in text
    assert out[ids["cnn-fashion_mnist"]] == {"val_acc": 0.8, "test_acc": 0.6244000196456909}


def test_pipeline_report_gives_training_set_sizes_and_figures_full_size(cfg, workdir):
    c = cfg("out_dir=page", "report.history=false")
    manifest = workdir / "data/prepared/fashion_mnist/manifest.json"
    write_json(manifest, {"class_counts": {"train": [5500] * 10}})  # 55,000 training images
    png = workdir / "x.png"
    Image.new("RGB", (8, 8)).save(png)
    for key in ("scratch", "transfer"):
        run = RunDir(c.pipeline[key])
        write_json(run.eval / "metrics.json", {"accuracy": 0.9})
        (run.eval / "figures").mkdir(parents=True)
        for f in ("curves", "predictions"):
            (run.eval / "figures" / f"{f}.png").write_bytes(png.read_bytes())
    report.run(c)
    page = (workdir / "page/index.html").read_text()
    table = page.split("<h2>The pipeline</h2>")[1].split("<h2>")[0]
    assert "<td>55,000</td>" in table and "<td>1,000</td>" in table
    assert "trained on 55,000 images" in page and "trained on 1,000 images (100 per class)" in page
    # every figure opens full size: a toggle (no script, no second copy) around each image
    assert page.count("<img ") == page.count('class="zoom"') == 4
    assert page.count('<figure class="wide">') == 2  # the prediction grids, at page width


def test_the_report_shows_an_extended_run_with_its_new_length(cfg, synthetic, monkeypatch):
    """MLflow keeps a resumed run's first params: its later values (resumed_with.* tags) are what it changes.
    A run of the pipeline's `dvc repro` says so, not "by hand"."""
    from cnnlab import tracking

    train.run(cfg(*TINY, "trainer.max_epochs=1"))
    train.run(cfg(*TINY, "trainer.max_epochs=3", "resume=true"))
    monkeypatch.setenv("DVC_STAGE", "train")
    train.run(cfg(*TINY, "out_dir=staged"))
    extended, staged = sorted(tracking.experiments(cfg(*TINY)), key=lambda r: r["started"])
    assert extended["changes"] == {"trainer.max_epochs": "3"}
    assert staged["dvc_stage"] == "train" and not staged["changes"]

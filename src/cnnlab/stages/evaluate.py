"""Stage `evaluate`: a checkpoint (out_dir/model/best.ckpt, or evaluate.ckpt) + the prepared test split →
out_dir/eval/ (metrics.json: the summary `dvc exp show` compares; per_class.json; confusion.json for
`dvc plots`; figures/), written whole or not at all, and
logged into the MLflow run that trained the checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from cnnlab import evaluation as ev
from cnnlab import tracking
from cnnlab.data.prepared import load_manifest, load_split, manifest_hash
from cnnlab.errors import UserError
from cnnlab.evaluation.inference import Model, device_for, open_model, predict_logits
from cnnlab.io import atomic_dir, write_json
from cnnlab.models import check_input_shape
from cnnlab.paths import data_dir, latest_run, provenance, run_dir
from cnnlab.tasks.callbacks import read_history
from cnnlab.tasks.classifier import Classifier

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    e = cfg.evaluate
    run = run_dir(cfg)
    source = str(e.ckpt) if e.ckpt else str(run.best)  # a checkpoint, an exported .onnx or models:/...
    ckpt = Path(source)
    if not e.ckpt and not ckpt.is_file():
        hint = latest_run(cfg, "best.ckpt")
        raise UserError(f"nothing to evaluate in {run.root}: pass out_dir=<a run folder>"
                        + (f" (the latest is {hint})" if hint else "") + " or evaluate.ckpt=<checkpoint>")
    device = device_for(e.device)
    model = open_model(source, device, tracking.tracking_uri(cfg) if cfg.tracking.enabled else None)
    data = data_dir(cfg)
    manifest = load_manifest(data)
    check_input_shape(tuple(model.hparams.in_shape), tuple(manifest["image_shape"]))
    if list(model.hparams.class_names) != manifest["classes"]:
        raise UserError(f"the model's classes {list(model.hparams.class_names)[:5]}... differ from {data}'s "
                        f"{manifest['classes'][:5]}...; evaluate on the data the model was trained for")
    test = load_split(data, "test")
    logits = predict_logits(model, test.images, e.batch_size, tta=e.tta)
    names = manifest["classes"]
    metrics = ev.classification_metrics(logits, test.labels, names)

    with atomic_dir(run.eval) as out:  # a failure on the way leaves the previous evaluation whole
        _write(cfg, out, model, test, logits, names, metrics, run.train / "history.csv")
    # the MLflow run that trained this checkpoint (its run.json lies beside it), if it was tracked
    run_id = provenance(ckpt.parent).get("mlflow_run_id") if isinstance(model, Classifier) else None
    scalars = {f"test/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
    tracking.log_run_files(cfg, run_id, {"eval": [run.eval / f for f in ("metrics.json", "per_class.json",
                                                                          "confusion.json")],
                                         "eval/figures": sorted((run.eval / "figures").glob("*.png"))},
                           scalars)
    if cfg.tracking.registered_model and run_id:  # the evaluated model, with its test metrics, registered
        tracking.register_model(cfg, run_id, scalars)
    log.info("test accuracy %.4f on %d images (data %s) → %s", metrics["accuracy"], metrics["num_samples"],
             manifest_hash(data), run.eval)
    return metrics


def _write(cfg: DictConfig, out: Path, model: Model, test, logits: torch.Tensor, names: list[str],
           metrics: dict, history_csv: Path) -> None:
    e = cfg.evaluate
    probs, preds = logits.softmax(1), logits.argmax(1)
    # per-class accuracy apart: as DVC metrics its one column per class would crowd out `dvc exp show`
    write_json(out / "metrics.json", {k: v for k, v in metrics.items() if k != "per_class_accuracy"})
    write_json(out / "per_class.json", {"accuracy": metrics["per_class_accuracy"]})
    write_json(out / "confusion.json", ev.prediction_records(preds, test.labels, names))
    figs = out / "figures"
    ev.confusion_matrix_png(ev.confusion_matrix(logits, test.labels, len(names)), names,
                         figs / "confusion_matrix.png")
    pick = torch.randperm(len(test.labels), generator=torch.Generator().manual_seed(cfg.seed))[: e.grid_size]
    ev.prediction_grid_png(test.images[pick], preds[pick], test.labels[pick], names, figs / "predictions.png",
                        title=f"{cfg.run_name}: test predictions, pred (true)")
    ev.confident_mistakes_png(test.images, probs, test.labels, names, figs / "mistakes.png", n=e.mistakes)
    # what the model looks at, on the same random test images as the prediction grid (needs its layers)
    if e.gradcam and isinstance(model, Classifier):
        from cnnlab.visualize import gradcam_grid_png

        try:
            gradcam_grid_png(model, test.images[pick], test.labels[pick], names, figs / "gradcam.png",
                             n=e.gradcam)
        except UserError as err:
            # e.g. an MLP: nothing spatial to explain, and the evaluation stands without it
            log.info("no Grad-CAM grid: %s", err)
    if history_csv.is_file():
        ev.training_curves_png(read_history(history_csv), figs / "curves.png")

"""Stage `evaluate`: a checkpoint + the prepared test split → reports/<run>/eval/ (metrics.json, confusion.json
for `dvc plots`, figures/), logged into the training's MLflow run."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from cnnlab import tracking
from cnnlab.data.augment import tta_logits
from cnnlab.data.loader import TensorBatches
from cnnlab.data.prepared import load_manifest, load_split, manifest_hash
from cnnlab.errors import UserError
from cnnlab.evaluation import (classification_metrics, confident_mistakes_png, confusion_matrix,
                               confusion_matrix_png, prediction_grid_png, prediction_records,
                               training_curves_png)
from cnnlab.io import write_json
from cnnlab.models import check_input_shape
from cnnlab.stages.train import run_dirs
from cnnlab.tasks.classifier import Classifier

log = logging.getLogger(__name__)


def device_for(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def load_classifier(path: str | Path, device: torch.device) -> Classifier:
    if not Path(path).is_file():
        raise UserError(f"no checkpoint {path} (train first, or pass evaluate.ckpt=<file>)")
    try:  # weights_only: a checkpoint is data, never code
        return Classifier.load_from_checkpoint(path, map_location=device, weights_only=True).eval()
    except (RuntimeError, KeyError, EOFError) as e:
        raise UserError(f"cannot load checkpoint {path}: {str(e).splitlines()[0]}") from e


@torch.inference_mode()
def predict_logits(model: Classifier, images: torch.Tensor, batch_size: int, tta: bool = False) -> torch.Tensor:
    out = []
    for x, y in TensorBatches(images, torch.zeros(len(images), dtype=torch.long), batch_size, shuffle=False):
        x, _ = model.on_after_batch_transfer((x.to(model.device), y), 0)
        out.append((tta_logits(model, x) if tta else model(x)).float().cpu())
    return torch.cat(out)


def run(cfg: DictConfig) -> dict:
    e = cfg.evaluate
    model_dir, report_dir = run_dirs(cfg)
    out = report_dir / "eval"
    device = device_for(e.device)
    model = load_classifier(e.ckpt or model_dir / "best.ckpt", device)
    data_dir = Path(cfg.paths.prepared_dir) / cfg.data.name
    manifest = load_manifest(data_dir)
    check_input_shape(tuple(model.hparams.in_shape), tuple(manifest["image_shape"]))
    if list(model.hparams.class_names) != manifest["classes"]:
        raise UserError(f"checkpoint classes {list(model.hparams.class_names)[:5]}... differ from {data_dir}'s "
                        f"{manifest['classes'][:5]}...; evaluate on the data the model was trained for")
    test = load_split(data_dir, "test")
    logits = predict_logits(model, test.images, e.batch_size, tta=e.get("tta", False))
    names = manifest["classes"]
    metrics = classification_metrics(logits, test.labels, names)
    probs, preds = logits.softmax(1), logits.argmax(1)

    write_json(out / "metrics.json", metrics)
    write_json(out / "confusion.json", prediction_records(preds, test.labels, names))
    figs = out / "figures"
    confusion_matrix_png(confusion_matrix(logits, test.labels, len(names)), names, figs / "confusion_matrix.png")
    pick = torch.randperm(len(test.labels), generator=torch.Generator().manual_seed(cfg.seed))[: e.grid_size]
    prediction_grid_png(test.images[pick], preds[pick], test.labels[pick], names, figs / "predictions.png",
                        title=f"{cfg.run_name}: test predictions, pred (true)")
    confident_mistakes_png(test.images, probs, test.labels, names, figs / "mistakes.png", n=e.mistakes)
    if e.gradcam:  # what the model looks at, on the same random test images as the prediction grid
        from cnnlab.visualize import gradcam_grid_png

        gradcam_grid_png(model, test.images[pick], test.labels[pick], names, figs / "gradcam.png", n=e.gradcam)
    history_csv = report_dir / "train/history.csv"
    if history_csv.is_file():
        with open(history_csv) as f:
            rows = [{k: (float(v) if v not in ("", None) else None) for k, v in r.items()} for r in csv.DictReader(f)]
        training_curves_png(rows, figs / "curves.png")

    run_json = model_dir / "run.json"
    run_id = json.loads(run_json.read_text()).get("mlflow_run_id") if run_json.is_file() and not e.ckpt else None
    scalars = {f"test/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
    tracking.log_run_files(cfg, run_id, {"eval": [out / "metrics.json", out / "confusion.json"],
                                         "eval/figures": sorted(figs.glob("*.png"))}, scalars)
    log.info("test accuracy %.4f on %d images (data %s) → %s", metrics["accuracy"], metrics["num_samples"],
             manifest_hash(data_dir), out)
    return metrics

"""Stage `evaluate`: a checkpoint (out_dir/model/best.ckpt, or evaluate.ckpt) + the prepared test split →
out_dir/eval/ (metrics.json: the summary `dvc exp show` compares; per_class.json; confusion.json for
`dvc plots`; figures/), written whole or not at all.

A run's own evaluation (its best.ckpt, in its folder, with its config's evaluate.tta) is logged into the
MLflow run that trained it. Any other (TTA, another source or folder) is an evaluation of its own: a nested
MLflow run `eval:<what differs>` tagged `evaluates=<training run id>`, and never changes the metrics that
define the training run; in the training run's folder it writes eval-<what differs>/, not eval/."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from cnnlab import evaluation as ev
from cnnlab import tracking
from cnnlab.data.augment import tta_logits
from cnnlab.data.prepared import load_manifest, load_split, manifest_hash
from cnnlab.errors import UserError
from cnnlab.evaluation.inference import Model, device_for, open_model, predict_logits, training_run
from cnnlab.io import atomic_dir, write_json
from cnnlab.models import check_input_shape
from cnnlab.paths import data_dir, latest_run, run_dir
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
    uri = tracking.tracking_uri(cfg) if cfg.tracking.enabled else None
    model = open_model(source, device, uri)
    data = data_dir(cfg)
    manifest = load_manifest(data)
    check_input_shape(tuple(model.hparams.in_shape), tuple(manifest["image_shape"]))
    if list(model.hparams.class_names) != manifest["classes"]:
        raise UserError(f"the model's classes {list(model.hparams.class_names)[:5]}... differ from {data}'s "
                        f"{manifest['classes'][:5]}...; evaluate on the data the model was trained for")
    test = load_split(data, "test")
    logits, tta = _logits(model, test, e) if e.tta else (predict_logits(model, test.images, e.batch_size), {})
    names = manifest["classes"]
    metrics = ev.classification_metrics(logits, test.labels, names) | tta

    home = None if "://" in source or source.endswith(".onnx") else ckpt.parent.parent  # the run's folder
    differs = _differs(cfg, source, home)
    folder = run.eval if not differs or home is None or run.root.resolve() != home.resolve() else (
        run.root / ("eval-" + re.sub(r"[^\w.@-]+", "_", "-".join(differs))))
    with atomic_dir(folder) as out:  # a failure on the way leaves the previous evaluation whole
        _write(cfg, out, model, test, logits, names, metrics, run.train / "history.csv")
    run_id = training_run(source, uri).get("mlflow_run_id")
    scalars = {f"test/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
    files = {"eval": [folder / f for f in ("metrics.json", "per_class.json", "confusion.json")],
             "eval/figures": sorted((folder / "figures").glob("*.png"))}
    if differs and run_id:  # recorded beside the training run, which keeps the figures that define it
        params = {"evaluate.source": source, "evaluate.tta": e.tta, "data.name": cfg.data.name,
                  **({"evaluate.tta_views": tta["tta_views"]} if tta else {})}
        tags = {"mlflow.parentRunId": run_id, "evaluates": run_id, "dataset": cfg.data.name,
                "eval_data_hash": manifest_hash(data)}
        eval_id = tracking.new_run(cfg, "eval:" + ", ".join(differs), params, tags)
        tracking.log_run_files(cfg, eval_id, files, scalars, finish="FINISHED")
    else:
        tracking.log_run_files(cfg, run_id, files, scalars)
    if cfg.tracking.registered_model and run_id:  # the evaluated model, with its test metrics, registered
        tracking.register_model(cfg, run_id, scalars)
    log.info("test accuracy %.4f on %d images (data %s) → %s", metrics["accuracy"], metrics["num_samples"],
             manifest_hash(data), folder)
    return metrics


def _differs(cfg: DictConfig, source: str, home: Path | None) -> list[str]:
    """What makes this evaluation another than the run's own: the source (not its best.ckpt), TTA (unlike its
    config's evaluate.tta), the folder (not the run's); [] for the run's own evaluation."""
    config = home / "model" / "config.yaml" if home else None
    trained_tta = bool(OmegaConf.select(OmegaConf.load(config), "evaluate.tta", default=False)) if (
        config and config.is_file()) else False
    return [part for part, differs in (
        (Path(source).name if "://" not in source else source, not source.endswith("best.ckpt")),
        ("tta" if cfg.evaluate.tta else "no tta", bool(cfg.evaluate.tta) != trained_tta),
        (Path(cfg.out_dir).name, home is None or Path(cfg.out_dir).resolve() != home.resolve())) if differs]


def _logits(model: Model, test, e: DictConfig) -> tuple[torch.Tensor, dict]:
    """Test-time augmentation with only the views the model was trained to be invariant to (the mirror if it
    trained with flips, 1-px shifts if with crops): Fashion-MNIST models trained without flips lost 4–11
    points to all views. The other figure is reported beside: `plain_accuracy` without TTA, or, when no view
    applies (or the training is unknown: an export), `tta_accuracy` with all views."""
    plain = predict_logits(model, test.images, e.batch_size)
    known = isinstance(model, Classifier)
    mirror, shift = (bool(model.hparams.flip), bool(model.hparams.crop_padding)) if known else (False, False)
    if mirror or shift:
        with torch.inference_mode():
            views = torch.cat([tta_logits(model.logits, x, mirror, shift)
                               for x in test.images.split(e.batch_size)])
        return views, {"tta_views": "+".join(v for v, on in (("mirror", mirror), ("shift", shift)) if on),
                       "plain_accuracy": _accuracy(plain, test.labels)}
    every = _accuracy(predict_logits(model, test.images, e.batch_size, tta=True), test.labels)
    log.warning("evaluate.tta: %s, so no test-time view applies: accuracy %.4f without TTA (all views: %.4f)",
                "the model trained without flips or crops" if known else "the model's training is unknown",
                _accuracy(plain, test.labels), every)
    return plain, {"tta_views": "none", "tta_accuracy": every}


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


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

"""Stage `export`: a trained model (out_dir's best.ckpt, any checkpoint, or `models:/<name>@<alias>`) →
<out_dir>/export/{model.onnx, model.pt2, model.json}, preprocessing inside, checked against PyTorch on the
test images of its data before anything is kept (cnnlab.export), and logged to the MLflow run that trained
it."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from cnnlab import tracking
from cnnlab.data.prepared import load_manifest, load_split, manifest_hash
from cnnlab.errors import UserError
from cnnlab.evaluation.inference import ExportedModel, open_model
from cnnlab.export import export
from cnnlab.paths import data_dir, latest_run, provenance, run_dir
from cnnlab.tasks.classifier import Classifier

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    x, run = cfg.export, run_dir(cfg)
    source = str(x.source or run.best)
    if not x.source and not run.best.is_file():
        hint = latest_run(cfg, "best.ckpt")
        raise UserError(f"nothing to export in {run.root}: pass out_dir=<a run folder>"
                        + (f" (the latest is {hint})" if hint else "") + " or export.source=<checkpoint or "
                        "models:/name@alias>")
    model = open_model(source, torch.device("cpu"),
                       tracking.tracking_uri(cfg) if cfg.tracking.enabled else None)
    if isinstance(model, ExportedModel):
        raise UserError(f"{source} is already an export; export a checkpoint or a registered model")
    data = data_dir(cfg)
    manifest = load_manifest(data)
    if list(model.hparams.class_names) != manifest["classes"]:
        raise UserError(f"the model's classes differ from {data}'s: the check needs test images of the data "
                        "it was trained on (data=...)")
    images = load_split(data, "test").images[: x.check_images]
    if isinstance(model, Classifier):
        net, mean, std = model.net, model.mean.flatten().tolist(), model.std.flatten().tolist()
    else:  # the registry's network takes [0, 1] images and normalises them itself
        net, mean, std = model.net, [0.0] * images.shape[1], [1.0] * images.shape[1]
    prov = provenance(Path(source).parent) if isinstance(model, Classifier) else {}
    meta = {"classes": list(model.hparams.class_names), "source": source,
            "mlflow_run_id": prov.get("mlflow_run_id"), "git_sha": prov.get("git_sha"),
            "data_hash": prov.get("data_hash") or manifest_hash(data)}
    folder = run.root / "export"
    info = export(net, mean, std, images, folder, meta, uint8=x.input_dtype == "uint8", atol=x.atol,
                  formats=tuple(x.formats))
    if meta["mlflow_run_id"]:
        tracking.log_run_files(cfg, meta["mlflow_run_id"], {"export": sorted(folder.iterdir())}, {})
    print(f"exported → {folder}: " + ", ".join(sorted(p.name for p in folder.iterdir())))
    return info

"""Stage `export`: a trained model (out_dir's best.ckpt, any checkpoint, or `models:/<name>@<alias>`) →
<out_dir>/export/{model.onnx, model.pt2, model.json}, preprocessing inside, checked against PyTorch on the
test images of its data before anything is kept (cnnlab.export), and logged to the MLflow run that trained
it."""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig

from cnnlab import tracking
from cnnlab.data.prepared import load_manifest, load_split, manifest_hash
from cnnlab.errors import UserError
from cnnlab.evaluation.inference import ExportedModel, open_model, training_run
from cnnlab.export import export
from cnnlab.models import check_input_shape
from cnnlab.paths import data_dir, latest_run, run_dir

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    x, run = cfg.export, run_dir(cfg)
    source = str(x.source or run.best)
    if not x.source and not run.best.is_file():
        hint = latest_run(cfg, "best.ckpt")
        raise UserError(f"nothing to export in {run.root}: pass out_dir=<a run folder>"
                        + (f" (the latest is {hint})" if hint else "") + " or export.source=<checkpoint or "
                        "models:/name@alias>")
    uri = tracking.tracking_uri(cfg) if cfg.tracking.enabled else None
    model = open_model(source, torch.device("cpu"), uri)
    if isinstance(model, ExportedModel):
        raise UserError(f"{source} is already an export; export a checkpoint or a registered model")
    data = data_dir(cfg)
    manifest = load_manifest(data)
    check_input_shape(tuple(model.hparams.in_shape), tuple(manifest["image_shape"]))
    if list(model.hparams.class_names) != manifest["classes"]:
        raise UserError(f"the model's classes differ from {data}'s: the check needs test images of the data "
                        "it was trained on (data=...)")
    images = load_split(data, "test").images[: x.check_images]
    prov = training_run(source, uri)
    meta = {"classes": list(model.hparams.class_names), "source": source,
            "mlflow_run_id": prov.get("mlflow_run_id"), "git_sha": prov.get("git_sha"),
            "data_hash": prov.get("data_hash") or manifest_hash(data)}
    folder = run.root / "export"
    net, mean, std = model.net, model.mean.flatten().tolist(), model.std.flatten().tolist()
    info = export(net, mean, std, images, folder, meta, uint8=x.input_dtype == "uint8", atol=x.atol,
                  formats=tuple(x.formats))
    if meta["mlflow_run_id"]:
        tracking.log_run_files(cfg, meta["mlflow_run_id"], {"export": sorted(folder.iterdir())}, {})
    print(f"exported → {folder}: " + ", ".join(sorted(p.name for p in folder.iterdir())))
    return info

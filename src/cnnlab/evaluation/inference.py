"""Running a trained classifier: the device to use, the model from any of its sources (a cnnlab checkpoint,
an exported .onnx, `models:/<name>@<alias>` in the MLflow registry) and batched logits (with test-time
augmentation for any of them)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from pytorch_lightning.utilities.parsing import AttributeDict

from cnnlab.data.augment import tta_logits
from cnnlab.errors import UserError
from cnnlab.paths import provenance
from cnnlab.tasks.classifier import Classifier
from cnnlab.tasks.logger import REGISTERED_CHECKPOINT


class ExportedModel:
    """An exported model.onnx (with its model.json), run by onnxruntime: uint8 images → logits."""

    def __init__(self, path: str | Path):
        from cnnlab.export import onnx_session, read_meta

        meta = read_meta(Path(path))
        try:
            self.session = onnx_session(Path(path))
        except Exception as e:  # noqa: BLE001 — onnxruntime's own types (InvalidProtobuf, Fail, ...)
            raise UserError(f"{path} is not a valid ONNX model ({str(e).splitlines()[0][:200]})") from None
        self.uint8 = meta["input"]["dtype"] == "uint8"
        self.hparams = AttributeDict(class_names=meta["classes"], in_shape=tuple(meta["input"]["shape"][1:]))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        from cnnlab.export import onnx_logits

        return onnx_logits(self.session, (images if self.uint8 else images.float() / 255).contiguous())


Model = Classifier | ExportedModel


def registered_checkpoint(uri: str, tracking_uri: str, folder: Path) -> Path:
    """The cnnlab checkpoint inside a registered model (`models:/<name>@<alias>` or `/<version>`), downloaded
    to `folder`. Only that file: loading the model itself (mlflow.pytorch.load_model) unpickles it, which runs
    whatever code whoever logged it put there."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    try:
        mlflow.models.get_model_info(uri)  # its MLmodel file (YAML): data
    except Exception as e:  # MlflowException: no such model, version or alias
        raise UserError(f"{uri}: {str(e).splitlines()[0]}") from None
    try:
        path = mlflow.artifacts.download_artifacts(f"{uri}/{REGISTERED_CHECKPOINT}", dst_path=str(folder))
    except Exception:  # MlflowException: no such artifact
        raise UserError(f"{uri} holds no cnnlab checkpoint ({REGISTERED_CHECKPOINT}): refused, as loading "
                        "any other model would run its code; register models that cnnlab trained") from None
    return Path(path)


def open_model(source: str | Path, device: torch.device, tracking_uri: str | None = None) -> Model:
    """A cnnlab checkpoint, an exported .onnx or a registered `models:/...` (the checkpoint cnnlab logged
    with it) → a model to evaluate, predict or export with."""
    if str(source).startswith("models:/"):
        if tracking_uri is None:
            raise UserError(f"{source}: the MLflow registry needs tracking (tracking.enabled=true)")
        with tempfile.TemporaryDirectory() as folder:
            return Classifier.load(registered_checkpoint(str(source), tracking_uri, Path(folder)), device)
    if str(source).endswith(".onnx"):
        if not Path(source).is_file():
            raise UserError(f"{source} does not exist")
        return ExportedModel(source)
    return Classifier.load(source, device)


def training_run(source: str, tracking_uri: str | None) -> dict:
    """What is known of the run that trained a model (mlflow_run_id, git_sha, data_hash, where recorded):
    run.json beside a checkpoint, model.json beside an export, the registry's record of a registered model."""
    if source.startswith("models:/"):
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        run_id = mlflow.models.get_model_info(source).run_id
        tags = mlflow.MlflowClient(tracking_uri).get_run(run_id).data.tags
        return {"mlflow_run_id": run_id, **{k: tags[k] for k in ("git_sha", "data_hash") if k in tags}}
    if source.endswith(".onnx"):
        from cnnlab.export import read_meta

        return read_meta(Path(source))
    return provenance(Path(source).parent)


def device_for(name: str) -> torch.device:
    """`auto`: CUDA when there is one, else the CPU; otherwise the device named."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


@torch.inference_mode()
def predict_logits(model: Model, images: torch.Tensor, batch_size: int, tta: bool = False) -> torch.Tensor:
    """uint8 images [N,C,H,W] → float logits [N, classes] on the CPU, in batches on the model's device; with
    `tta`, the test-time views are made of the uint8 images (so any model source can use them)."""
    f = model.logits
    return torch.cat([tta_logits(f, x) if tta else f(x) for x in images.split(batch_size)])

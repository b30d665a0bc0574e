"""Running a trained classifier: the device to use, the model from any of its sources (a cnnlab checkpoint,
an exported .onnx, `models:/<name>@<alias>` in the MLflow registry) and batched logits (with test-time
augmentation for any of them)."""

from __future__ import annotations

from pathlib import Path

import torch
from pytorch_lightning.utilities.parsing import AttributeDict

from cnnlab.data.augment import tta_logits
from cnnlab.errors import UserError
from cnnlab.tasks.classifier import Classifier


class ExportedModel:
    """An exported model.onnx (with its model.json), run by onnxruntime: uint8 images → logits."""

    def __init__(self, path: str | Path):
        from cnnlab.export import onnx_session, read_meta

        meta = read_meta(Path(path))
        self.session, self.uint8 = onnx_session(Path(path)), meta["input"]["dtype"] == "uint8"
        self.hparams = AttributeDict(class_names=meta["classes"], in_shape=tuple(meta["input"]["shape"][1:]))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        from cnnlab.export import onnx_logits

        return onnx_logits(self.session, (images if self.uint8 else images.float() / 255).contiguous())


class RegisteredModel:
    """A model of the MLflow registry (`models:/<name>@<alias>` or `/<version>`): the network cnnlab logged
    with its training run, float images in [0, 1] → logits, and its classes from the model's metadata."""

    def __init__(self, uri: str, tracking_uri: str, device: torch.device):
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        try:
            info = mlflow.models.get_model_info(uri)
        except Exception as e:  # MlflowException: no such model, version or alias
            raise UserError(f"{uri}: {str(e).splitlines()[0]}") from None
        meta = info.metadata or {}
        if "classes" not in meta:
            raise UserError(f"{uri} has no class names in its metadata: it was not logged by cnnlab")
        self.net = mlflow.pytorch.load_model(uri, map_location=device)
        self.hparams = AttributeDict(class_names=meta["classes"], in_shape=tuple(meta["in_shape"]))
        self.device = device

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.to(self.device).float() / 255).float().cpu()


Model = Classifier | ExportedModel | RegisteredModel


def open_model(source: str | Path, device: torch.device, tracking_uri: str | None = None) -> Model:
    """A cnnlab checkpoint, an exported .onnx or a registered `models:/...` → a model to evaluate or predict
    with."""
    if str(source).startswith("models:/"):
        if tracking_uri is None:
            raise UserError(f"{source}: the MLflow registry needs tracking (tracking.enabled=true)")
        return RegisteredModel(str(source), tracking_uri, device)
    if str(source).endswith(".onnx"):
        if not Path(source).is_file():
            raise UserError(f"{source} does not exist")
        return ExportedModel(source)
    return Classifier.load(source, device)


def device_for(name: str) -> torch.device:
    """`auto`: CUDA when there is one, else the CPU; otherwise the device named."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


@torch.inference_mode()
def predict_logits(model: Model, images: torch.Tensor, batch_size: int, tta: bool = False) -> torch.Tensor:
    """uint8 images [N,C,H,W] → float logits [N, classes] on the CPU, in batches on the model's device; with
    `tta`, the test-time views are made of the uint8 images (so any model source can use them)."""
    f = model.logits
    return torch.cat([tta_logits(f, x) if tta else f(x) for x in images.split(batch_size)])

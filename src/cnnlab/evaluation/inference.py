"""Running a trained classifier: the device to use and batched logits (with test-time augmentation)."""

from __future__ import annotations

import torch

from cnnlab.data.augment import tta_logits
from cnnlab.tasks.classifier import Classifier


def device_for(name: str) -> torch.device:
    """`auto`: CUDA when there is one, else the CPU; otherwise the device named."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


@torch.inference_mode()
def predict_logits(model: Classifier, images: torch.Tensor, batch_size: int,
                   tta: bool = False) -> torch.Tensor:
    """uint8 images [N,C,H,W] → float logits [N, classes] on the CPU, in batches on the model's device."""
    out = []
    for x in images.split(batch_size):
        x = model.preprocess(x.to(model.device))
        out.append((tta_logits(model, x) if tta else model(x)).float().cpu())
    return torch.cat(out)

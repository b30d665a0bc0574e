"""Stage `predict`: top-k classes for image files ("predict the class of an image in practice").

With `predict.ckpt` a trained cnnlab model is used; without, the pretrained ImageNet backbone itself
(`predict.backbone`, EfficientNet-Lite0 offline by default) with ImageNet class names.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from cnnlab.errors import UserError
from cnnlab.images import center_crop, chw, image_files, open_image, resize_square


def _input(path: Path, channels: int, size: int, crop: float = 1.0) -> torch.Tensor:
    """uint8 [C, size, size]: squashed like the prepared data, or with crop < 1 the ImageNet centre crop."""
    im = open_image(path, channels)
    return torch.from_numpy(chw(center_crop(im, size, crop) if crop < 1.0 else resize_square(im, size)))


@torch.inference_mode()
def run(cfg: DictConfig) -> dict:
    p = cfg.predict
    if not p.image:
        raise UserError("predict needs predict.image=<image file or folder>")
    files = image_files(p.image)
    if p.ckpt:
        from cnnlab.evaluation.inference import device_for
        from cnnlab.tasks.classifier import Classifier

        model = Classifier.load(p.ckpt, device_for("auto"))
        c, h, _ = model.hparams.in_shape
        x = torch.stack([_input(f, c, h) for f in files]).to(model.device)
        x = model.preprocess(x)
        probs, names = model(x).float().softmax(1).cpu(), list(model.hparams.class_names)
    else:
        from cnnlab.models.pretrained import load_pretrained

        pre = load_pretrained(p.backbone, weights_path=p.weights_path)
        x = torch.stack([_input(f, 3, pre.input_size, p.center_crop) for f in files]).float() / 255
        mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
        probs, names = pre.net((x - mean) / std).softmax(1), pre.categories
    k = min(p.top_k, probs.shape[1])
    top = probs.topk(k, dim=1)
    results = {}
    for f, vals, idx in zip(files, top.values.tolist(), top.indices.tolist()):
        results[str(f)] = [{"class": names[i], "index": i, "prob": round(v, 4)} for v, i in zip(vals, idx)]
        print(f"{f}: " + ", ".join(f"{names[i]} {v:.3f}" for v, i in zip(vals, idx)))
    return results

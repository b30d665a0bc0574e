"""Stage `predict`: top-k classes for image files ("predict the class of an image in practice").

With `predict.ckpt` a trained cnnlab model is used; without, the pretrained ImageNet backbone itself
(`predict.backbone`, EfficientNet-Lite0 offline by default) with ImageNet class names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from cnnlab.data.sources import IMAGE_EXTS
from cnnlab.errors import UserError


def image_files(path: str | None) -> list[Path]:
    if not path:
        raise UserError("predict needs predict.image=<image file or folder>")
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise UserError(f"no image files in {p}")
        return files
    if not p.is_file():
        raise UserError(f"image {p} does not exist")
    return [p]


def read_image(path: Path, channels: int, size: int, center_crop: float = 1.0) -> torch.Tensor:
    """Any mode (RGBA, palette, grayscale, 16-bit) and size → uint8 [C, size, size]. With center_crop < 1 the
    shorter side is resized to size / center_crop and the centre cut out (the ImageNet evaluation transform)."""
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
    except Exception as e:  # PIL raises many types for unreadable files
        raise UserError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
    if center_crop < 1.0:
        short = round(size / center_crop)
        w, h = im.size
        im = im.resize((max(short, round(w * short / h)), max(short, round(h * short / w))), Image.Resampling.BICUBIC)
        left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
        im = im.crop((left, top, left + size, top + size))
    else:
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.array(im, dtype=np.uint8)  # a writable copy
    return torch.from_numpy(arr[None] if channels == 1 else arr.transpose(2, 0, 1).copy())


@torch.inference_mode()
def run(cfg: DictConfig) -> dict:
    p = cfg.predict
    files = image_files(p.image)
    if p.ckpt:
        from cnnlab.stages.evaluate import device_for, load_classifier

        model = load_classifier(p.ckpt, device_for("auto"))
        c, h, _ = model.hparams.in_shape
        x = torch.stack([read_image(f, c, h) for f in files]).to(model.device)
        x, _ = model.on_after_batch_transfer((x, None), 0)
        probs, names = model(x).float().softmax(1).cpu(), list(model.hparams.class_names)
    else:
        from cnnlab.models.pretrained import load_pretrained

        pre = load_pretrained(p.backbone, weights_path=p.weights_path)
        x = torch.stack([read_image(f, 3, pre.input_size, p.center_crop) for f in files]).float() / 255
        mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
        probs, names = pre.net((x - mean) / std).softmax(1), pre.categories
    k = min(p.top_k, probs.shape[1])
    top = probs.topk(k, dim=1)
    results = {}
    for f, vals, idx in zip(files, top.values.tolist(), top.indices.tolist()):
        results[str(f)] = [{"class": names[i], "index": i, "prob": round(v, 4)} for v, i in zip(vals, idx)]
        print(f"{f}: " + ", ".join(f"{names[i]} {v:.3f}" for v, i in zip(vals, idx)))
    return results

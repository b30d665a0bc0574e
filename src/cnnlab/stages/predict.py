"""Stage `predict`: top-k classes for image files ("predict the class of an image in practice").

With `predict.ckpt` a trained model is used — a cnnlab checkpoint, an exported .onnx (onnxruntime) or
`models:/<name>@<alias>` from the MLflow registry; without, the pretrained ImageNet backbone itself
(`predict.backbone`, EfficientNet-Lite0 offline by default) with ImageNet class names. Folders go in batches;
`predict.output` writes one row per image (file, top-k classes and probabilities) as CSV or JSON.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from omegaconf import DictConfig
from rich.progress import track

from cnnlab.errors import UserError
from cnnlab.images import center_crop, chw, image_files, open_image, resize_square
from cnnlab.io import write_csv, write_json


def _input(path: Path, channels: int, size: int, crop: float = 1.0) -> torch.Tensor:
    """uint8 [C, size, size]: squashed like the prepared data, or with crop < 1 the ImageNet centre crop."""
    im = open_image(path, channels)
    return torch.from_numpy(chw(center_crop(im, size, crop) if crop < 1.0 else resize_square(im, size)))


def _model(cfg: DictConfig):
    """(batch of files → probabilities, class names): a trained model (checkpoint, .onnx, models:/...) or the
    pretrained ImageNet backbone."""
    p = cfg.predict
    if p.ckpt:
        from cnnlab import tracking
        from cnnlab.evaluation.inference import device_for, open_model, predict_logits

        model = open_model(p.ckpt, device_for("auto"), tracking.tracking_uri(cfg) if cfg.tracking.enabled
                           else None)
        c, h, _ = model.hparams.in_shape
        return (lambda fs: predict_logits(model, torch.stack([_input(f, c, h) for f in fs]), len(fs))
                .softmax(1)), list(model.hparams.class_names)
    from cnnlab.models.pretrained import load_pretrained

    pre = load_pretrained(p.backbone, weights_path=p.weights_path)
    mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)

    def probs(fs: list[Path]) -> torch.Tensor:
        x = torch.stack([_input(f, 3, pre.input_size, p.center_crop) for f in fs]).float() / 255
        return pre.net((x - mean) / std).softmax(1)
    return probs, pre.categories


@torch.inference_mode()
def run(cfg: DictConfig) -> dict:
    p = cfg.predict
    if not p.image:
        raise UserError("predict needs predict.image=<image file or folder>")
    if p.output and Path(p.output).suffix not in (".csv", ".json"):
        raise UserError(f"predict.output={p.output}: write .csv or .json")
    files = image_files(p.image)
    probs_of, names = _model(cfg)
    k = min(p.top_k, len(names))
    batches = [files[i:i + p.batch_size] for i in range(0, len(files), p.batch_size)]
    results = {}
    # a progress bar for folders (on the terminal only); one line per image unless they go to a file
    for fs in track(batches, description="predict", disable=len(batches) < 2 or not sys.stderr.isatty()):
        top = probs_of(fs).topk(k, dim=1)
        for f, vals, idx in zip(fs, top.values.tolist(), top.indices.tolist()):
            results[str(f)] = [{"class": names[i], "index": i, "prob": round(v, 4)}
                               for v, i in zip(vals, idx)]
            if not p.output:
                print(f"{f}: " + ", ".join(f"{names[i]} {v:.3f}" for v, i in zip(vals, idx)))
    if p.output and p.output.endswith(".json"):
        write_json(p.output, results)
    elif p.output:
        write_csv([{"file": f, **{f"{key}_{j + 1}": t[key] for j, t in enumerate(top)
                                  for key in ("class", "prob")}} for f, top in results.items()], p.output)
    if p.output:
        print(f"{len(results)} images → {p.output}")
    return results

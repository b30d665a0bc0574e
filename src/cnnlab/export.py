"""A trained classifier → files that run without cnnlab: ONNX (onnxruntime, any language) and a
`torch.export` program (.pt2, `torch.export.load(f).module()`), both with the preprocessing inside (uint8
[B,C,H,W] in 0–255, or float in 0–1 → logits) and a dynamic batch dimension, and model.json beside them.
Every export checks itself against the PyTorch model on real images before anything is kept."""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path

import torch

from cnnlab.errors import UserError
from cnnlab.io import atomic_dir, no_space, write_json

log = logging.getLogger(__name__)

FORMATS = ("onnx", "pt2")


class ExportNet(torch.nn.Module):
    """Images as a user has them → logits: the normalisation the model was trained with, baked in."""

    def __init__(self, net: torch.nn.Module, mean: list[float], std: list[float], uint8: bool):
        super().__init__()
        self.net, self.uint8 = net, uint8
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255 if self.uint8 else images
        return self.net((x - self.mean) / self.std)


def _onnx(module: torch.nn.Module, example: torch.Tensor, path: Path, dims: dict) -> None:
    import contextlib

    # the exporter narrates every pass (stdout and INFO logs); a failure still raises
    for name in ("onnx_ir", "onnxscript"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), dynamo=True, dynamic_shapes=dims,
                          input_names=["images"], output_names=["logits"], external_data=False)


def onnx_session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def onnx_logits(session, images: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: images.numpy()})[0])


@torch.inference_mode()
def check(reference: torch.Tensor, outputs: dict[str, torch.Tensor], atol: float) -> dict:
    """Every format's logits against the PyTorch model's: max |Δlogit| ≤ atol and the same top-1 on every
    image, else a UserError naming the format and how far it is."""
    report = {}
    for fmt, logits in outputs.items():
        diff = (logits - reference).abs().max().item()
        agree = (logits.argmax(1) == reference.argmax(1)).float().mean().item()
        report[fmt] = {"max_abs_logit_diff": diff, "top1_agreement": agree}
        if not diff <= atol or agree < 1.0:
            raise UserError(f"export check failed for {fmt}: max |Δlogit| {diff:.2e} (allowed {atol:.0e}), "
                            f"top-1 agrees on {agree:.2%} of {len(reference)} test images; nothing was "
                            "written")
    return report


def export(net: torch.nn.Module, mean: list[float], std: list[float], images: torch.Tensor, folder: Path,
           meta: dict, uint8: bool = True, atol: float = 1e-4, formats: tuple[str, ...] = FORMATS,
           reference: ExportNet | None = None) -> dict:
    """Export `net` (eval mode, CPU) to `folder` (written whole or not at all). `images`: real uint8
    [N,C,H,W] test images, the check's inputs; `reference`: what the exports must match (default: the same
    module in PyTorch; a test passes a broken one to see the check fail)."""
    if unknown := set(formats) - set(FORMATS):
        raise UserError(f"export.formats: unknown {sorted(unknown)}; valid: {', '.join(FORMATS)}")
    module = ExportNet(net, mean, std, uint8)  # `net` comes in eval mode
    x = images if uint8 else images.float() / 255
    # batch 2 in the traced example: a size-1 dimension would be specialised to a constant
    example, dims = x[:2].contiguous(), {"images": {0: torch.export.Dim("batch", min=1, max=65536)}}
    with torch.inference_mode():
        expected = (reference or module)(x)
    try:
        with atomic_dir(folder) as out:
            outputs = {}
            if "pt2" in formats:
                program = torch.export.export(module, (example,), dynamic_shapes=dims)
                # into memory first: torch's zip writer aborts the process (SIGABRT) when the disk fills under
                # it, where Python's own write raises an OSError that names the file
                buffer = io.BytesIO()
                torch.export.save(program, buffer)
                (out / "model.pt2").write_bytes(buffer.getvalue())
                with torch.inference_mode():
                    outputs["pt2"] = torch.export.load(str(out / "model.pt2")).module()(x)
            if "onnx" in formats:
                _onnx(module, example, out / "model.onnx", dims)
                outputs["onnx"] = onnx_logits(onnx_session(out / "model.onnx"), x)
            checked = check(expected, outputs, atol)
            c, h, w = images.shape[1:]
            info = {**meta, "input": {"name": "images", "shape": [None, c, h, w],
                                      "dtype": "uint8" if uint8 else "float32",
                                      "range": [0, 255] if uint8 else [0.0, 1.0],
                                      "layout": "NCHW, " + ("RGB" if c == 3 else "grayscale")},
                    "output": {"name": "logits", "shape": [None, len(meta["classes"])]},
                    "files": {f: f"model.{f}" for f in formats},
                    "check": {"images": len(images), "atol": atol, **checked}}
            write_json(out / "model.json", info)
    except OSError as e:
        raise no_space(e, folder) or e from None  # atomic_dir has removed what was written
    log.info("exported %s → %s (max |Δlogit| %s on %d test images)", "+".join(formats), folder,
             ", ".join(f"{k} {v['max_abs_logit_diff']:.1e}" for k, v in checked.items()), len(images))
    return info


def read_meta(onnx_file: Path) -> dict:
    """The model.json beside an exported model: its classes and input, checked."""
    meta = onnx_file.with_name("model.json")
    if not meta.is_file():
        raise UserError(f"{meta} is missing: cnnlab needs the classes and input of {onnx_file} (export it "
                        "with `cnnlab export`)")
    try:
        info = json.loads(meta.read_text())
        shape, dtype, classes = info["input"]["shape"], info["input"]["dtype"], info["classes"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{meta} is not the model.json of a cnnlab export ({type(e).__name__} {e})") from None
    if not (dtype in ("uint8", "float32") and isinstance(shape, list) and len(shape) == 4
            and all(type(s) is int and s >= 1 for s in shape[1:]) and isinstance(classes, list)
            and classes and all(isinstance(c, str) for c in classes)):
        raise UserError(f"{meta} is not the model.json of a cnnlab export (its input or classes)")
    return info

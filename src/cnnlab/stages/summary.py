"""Stage `summary`: print a model's layers, output shapes and parameter counts (no data needed)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import UserError
from cnnlab.models import build_model
from cnnlab.models.summary import count_params, summary_table


def run(cfg: DictConfig) -> dict:
    if OmegaConf.select(cfg, "model.net") is None:
        raise UserError("no model selected; add model=<name> (a file in conf/model/)")
    # the shape the model was designed for, unless summary.input_shape asks what it becomes on other images
    shape = OmegaConf.select(cfg, "summary.input_shape") or OmegaConf.select(cfg, "model.input_shape")
    if shape is None:
        raise UserError("model.input_shape is not set; pass summary.input_shape=[C,H,W]")
    shape = list(shape) if OmegaConf.is_list(shape) or isinstance(shape, (list, tuple)) else [shape]
    if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise UserError(f"input shape must be [channels, height, width] of positive ints, got {shape}")
    num_classes = OmegaConf.select(cfg, "summary.num_classes", default=None) or 10
    model = build_model(cfg.model.net, tuple(shape), int(num_classes))
    print(summary_table(model, shape))
    total, trainable = count_params(model)
    return {"total_params": total, "trainable_params": trainable}

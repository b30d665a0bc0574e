"""Stage `prepare`: raw dataset → prepared train/val/test tensors + manifest, written atomically."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from cnnlab.data.prepared import SPLITS, save_split, stratified_split
from cnnlab.data.sources import READERS, split_sizes
from cnnlab.errors import UserError
from cnnlab.io import atomic_dir, no_space, sha256_file, write_json
from cnnlab.paths import data_dir

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    d = cfg.data
    if d.source not in READERS:
        raise UserError(f"unknown data.source {d.source!r}; valid: {', '.join(READERS)}")
    raw = READERS[d.source](d, Path(cfg.paths.raw_dir))
    n_val, n_test = split_sizes(d, raw)  # counts, or fractions of the training images
    train_idx, val_idx = stratified_split(raw.train_y, n_val, d.split_seed)
    splits = {"train": (raw.train_x[train_idx], raw.train_y[train_idx]),
              "val": (raw.train_x[val_idx], raw.train_y[val_idx])}
    if raw.test_x is not None:
        splits["test"] = (raw.test_x, raw.test_y)
    else:  # no official test split (e.g. an image folder without test/): carve one, seeded, disjoint from val
        rest_idx, test_idx = stratified_split(raw.train_y[train_idx], n_test, d.split_seed + 1,
                                              key="data.test_size")
        splits["test"] = splits["train"][0][test_idx], splits["train"][1][test_idx]
        splits["train"] = splits["train"][0][rest_idx], splits["train"][1][rest_idx]

    out = data_dir(cfg)
    try:
        manifest = _write(out, d, raw, splits)
    except OSError as e:
        raise no_space(e, out) or e from None  # atomic_dir has removed what was written
    log.info("prepared %s → %s: %s, images %s", d.name, out, manifest["sizes"], manifest["image_shape"])
    return manifest["sizes"]


def _write(out: Path, d: DictConfig, raw, splits: dict) -> dict:
    with atomic_dir(out) as tmp:
        for name in SPLITS:
            save_split(tmp / f"{name}.safetensors", *splits[name])
        manifest = {
            "name": d.name,
            "source": {"reader": d.source, **raw.source},
            "classes": raw.classes,
            "num_classes": len(raw.classes),
            "image_shape": list(raw.train_x.shape[1:]),
            "split_seed": d.split_seed,
            "sizes": {k: int(len(v[1])) for k, v in splits.items()},
            "test_source": "official" if raw.test_x is not None else "carved from train",
            "class_counts": {k: np.bincount(v[1], minlength=len(raw.classes)).tolist()
                             for k, v in splits.items()},
            # per-channel statistics of the train split, in [0, 1] units: models normalise with these
            "mean": (splits["train"][0].mean(axis=(0, 2, 3), dtype=np.float64) / 255).round(6).tolist(),
            "std": (splits["train"][0].std(axis=(0, 2, 3), dtype=np.float64) / 255).round(6).tolist(),
            "sha256": {f"{k}.safetensors": sha256_file(tmp / f"{k}.safetensors") for k in SPLITS},
        }
        write_json(tmp / "manifest.json", manifest)
    return manifest

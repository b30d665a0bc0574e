"""The prepared form every stage reads: `<dir>/{train,val,test}.safetensors` (uint8 NCHW images, int64
labels) and `manifest.json`. safetensors: no pickle, memory-mappable, and byte-identical for equal input."""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cnnlab.errors import UserError
from cnnlab.io import sha256_file

SPLITS = ("train", "val", "test")


def stratified_split(labels: np.ndarray, n_val: int, seed: int,
                     key: str = "data.val_size") -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val), both sorted; val keeps the class proportions (largest-remainder rounding).
    `key` is the config key n_val came from, for the error message."""
    if not 0 <= n_val < len(labels):
        raise UserError(f"{key}={n_val} must be smaller than the {len(labels)} training images")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n_val / len(labels)
    take = np.floor(quota).astype(int)
    take[np.argsort(-(quota - take), kind="stable")[: n_val - take.sum()]] += 1
    val = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:t] for c, t in zip(classes, take)])
    mask = np.zeros(len(labels), bool)
    mask[val] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def save_split(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    # np.array copies: readers hand out read-only views of decompressed buffers, which torch refuses to wrap
    tensors = {"images": torch.from_numpy(np.array(images, order="C")),
               "labels": torch.from_numpy(np.array(labels, order="C"))}
    try:
        save_file(tensors, str(path))
    except SafetensorError as e:  # its I/O errors are not OSErrors: a full disk becomes one again
        if "os error 28" not in str(e):
            raise
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]


def load_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise UserError(f"no prepared data at {data_dir} (run `cnnlab prepare` with the same data=... first)")
    return json.loads(path.read_text())


def load_split(data_dir: str | Path, split: str) -> Split:
    path = Path(data_dir) / f"{split}.safetensors"
    if not path.is_file():
        raise UserError(f"missing {path} (run `cnnlab prepare` with the same data=... first)")
    t = load_file(str(path))
    return Split(t["images"], t["labels"])


def manifest_hash(data_dir: str | Path) -> str:
    """One hash naming the prepared data version (what runs record as provenance)."""
    return sha256_file(Path(data_dir) / "manifest.json")[:16]

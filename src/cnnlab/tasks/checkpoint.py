"""Checkpoint validation: a file is data, never code, and anything that is not a loadable cnnlab checkpoint is
one `InvalidCheckpoint` line saying why, not a traceback from torch, Hydra or Lightning."""

from __future__ import annotations

import math
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytorch_lightning as pl
import torch

from cnnlab.errors import UserError

# Keys `trainer.fit(ckpt_path=...)` needs beyond the weights: a weights-only file cannot be resumed.
RESUME_KEYS = ("epoch", "global_step", "loops", "optimizer_states", "callbacks")
# What Classifier.load rebuilds the model from (its saved hyper-parameters)
MODEL_KEYS = ("net", "in_shape", "num_classes", "class_names", "mean", "std")
# Bounds of a checkpoint's sizes (cnnlab trains 28-224 px images, ImageNet-21k has 21,841 classes)
MAX_SIDE, MAX_CLASSES = 4096, 100_000


class InvalidCheckpoint(UserError):
    """A file that is not a loadable cnnlab checkpoint; `reason` says why in a few words."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path} is not a valid cnnlab checkpoint ({reason})")
        self.path, self.reason = Path(path), reason


def _unreadable(path: Path, e: Exception) -> str:
    """A short reason for a torch.load failure; torch's own messages run to several lines."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "empty file"
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save writes a zip (since 1.6) or a pickle
        return "not a PyTorch file"
    if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
        return "it holds Python objects, not only tensors: refused, a checkpoint is data, never code"
    if head.startswith(b"\x80"):
        return "truncated or corrupt pickle"
    if not zipfile.is_zipfile(path):  # the zip directory sits at the end: gone when the file was cut short
        return "truncated: the zip archive has no end"
    return "a zip archive but not a PyTorch checkpoint"


def read_checkpoint(path: Path) -> dict:
    """torch.load(weights_only=True) + the structure every cnnlab checkpoint has, as InvalidCheckpoint."""
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint")
    if not path.is_file():
        raise InvalidCheckpoint(path, "not a file")
    try:  # weights_only: a checkpoint is data, never code
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror or e})") from None
    except Exception as e:  # noqa: BLE001 — arbitrary bytes fail as KeyError, EOFError, RuntimeError, ...
        raise InvalidCheckpoint(path, _unreadable(path, e)) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        what = f"it holds a {type(ckpt).__name__}" if not isinstance(ckpt, dict) else "no state_dict"
        raise InvalidCheckpoint(path, f"not a Lightning checkpoint: {what}")
    hp = ckpt.get("hyper_parameters")
    missing = [k for k in MODEL_KEYS if not isinstance(hp, dict) or k not in hp]
    if missing or not isinstance(hp["net"], dict) or "_target_" not in hp["net"]:
        why = f"lack {', '.join(missing)}" if missing else "have no net._target_"
        raise InvalidCheckpoint(path, f"a Lightning checkpoint but not of a cnnlab Classifier: hparams {why}")
    # The net config is instantiated by Hydra: a _target_ outside cnnlab.models, or a nested _target_/_args_,
    # would call any importable function with the file's arguments (builtins.open(path, "w") truncates a file;
    # Hydra's blocklist does not stop it): weights_only alone does not make a checkpoint data-only.
    target, special = hp["net"]["_target_"], _hydra_keys(hp["net"])
    if not isinstance(target, str) or not target.startswith("cnnlab.models.") or special:
        what = f"keys {', '.join(special)}" if special else f"_target_ {target!r}"
        raise InvalidCheckpoint(path, f"its net config has {what}: refused, only cnnlab.models nets are made")
    _check_hparams(path, hp)
    tensors = ckpt["state_dict"]
    if not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise InvalidCheckpoint(path, "its state_dict holds values that are not tensors")
    bad = next((k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise InvalidCheckpoint(path, f"non-finite weights in {bad}")
    return ckpt


def _check_hparams(path: Path, hp: dict) -> None:
    """What the network and the preprocessing are built from, before anything is built: sizes within reason
    (a network for 100000×100000 images would be allocated whole), statistics per channel, and no OmegaConf
    interpolation (`${oc.env:...}` would be resolved when the net config is read)."""
    if found := _interpolation(hp):
        raise InvalidCheckpoint(path, f"{found} holds an interpolation: refused, a checkpoint's values are "
                                      "never resolved")
    shape, n, names = hp["in_shape"], hp["num_classes"], hp["class_names"]
    if not (_numbers(shape, int) and len(shape) == 3 and shape[0] in (1, 3)
            and all(1 <= s <= MAX_SIDE for s in shape[1:])):
        raise InvalidCheckpoint(path, f"in_shape {shape!r}: must be [1 or 3, height, width], sides of 1 to "
                                      f"{MAX_SIDE} px")
    if not (type(n) is int and 1 <= n <= MAX_CLASSES and isinstance(names, list) and len(names) == n
            and all(isinstance(c, str) for c in names)):
        raise InvalidCheckpoint(path, f"num_classes {n!r} does not count its class_names, or is over "
                                      f"{MAX_CLASSES}")
    for key in ("mean", "std"):
        v = hp[key]
        if not (_numbers(v, float) and len(v) == shape[0] and (key == "mean" or min(v) > 0)):
            raise InvalidCheckpoint(path, f"{key} {v!r}: must be {shape[0]} finite numbers, one per channel"
                                          + (", > 0" if key == "std" else ""))


def _numbers(v: object, kind: type) -> bool:
    """A list or tuple of finite numbers (ints where kind is int; bools are neither)."""
    kinds = (int,) if kind is int else (int, float)
    return isinstance(v, (list, tuple)) and all(type(x) in kinds and math.isfinite(x) for x in v)


def _leaves(node: object, where: str) -> Iterator[tuple[str, object, object]]:
    """(path, key, value) of everything under a config node, depth first."""
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list | tuple) \
        else ()
    for k, v in children:
        path = f"{where}.{k}" if isinstance(node, dict) else f"{where}[{k}]"
        yield path, k, v
        yield from _leaves(v, path)


def _hydra_keys(net: dict) -> list[str]:
    """Hydra's instantiation keys in a net config, other than the top-level _target_."""
    return [p for p, k, _ in _leaves(net, "net") if str(k).startswith("_") and p != "net._target_"]


def _interpolation(hp: dict) -> str | None:
    """The first value that OmegaConf would resolve (`${...}`), named by its key."""
    return next((p for p, _, v in _leaves(hp, "hyper_parameters") if isinstance(v, str) and "${" in v), None)


def check_fit(path: Path, model: pl.LightningModule, ckpt: dict) -> None:
    """The checkpoint's weights fit the model rebuilt from its hyper-parameters (built on the meta device: its
    shapes, nothing allocated), else one line counting what is missing, unexpected or of another shape."""
    want, got = model.state_dict(), ckpt["state_dict"]
    missing, unexpected = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
    shapes = sorted(k for k in want.keys() & got.keys() if want[k].shape != got[k].shape)
    if missing or unexpected or shapes:
        parts = [f"{len(ks)} {what} (e.g. {ks[0]})" for what, ks in
                 (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)) if ks]
        raise InvalidCheckpoint(path, f"its weights do not fit its network: {', '.join(parts)}")


def load_weights(model: pl.LightningModule, ckpt: dict) -> None:
    """The checkpoint's weights (check_fit passed) into the model, strictly."""
    model.on_load_checkpoint(ckpt)
    model.load_state_dict(ckpt["state_dict"])


def check_checkpoint(path: str | Path) -> None:
    """Before `trainer.fit(ckpt_path=path)`: a corrupt or foreign last.ckpt is one line naming the way out,
    not a traceback from deep inside Lightning."""
    path = Path(path)
    try:
        _check_resumable(path)
    except InvalidCheckpoint as e:
        best = path.with_name("best.ckpt")  # ModelCheckpoint writes it with the full training state too
        way = f"resume from {best} by copying it to {path}, or " if best != path and _resumable(best) else ""
        raise UserError(f"cannot resume: {e}; {way}train again without resume=true") from None


def _check_resumable(path: Path) -> None:
    from cnnlab.tasks.classifier import Classifier  # which imports this module (for Classifier.load)

    ckpt = read_checkpoint(path)
    Classifier.from_checkpoint(path, ckpt)  # its network rebuilds and its weights fit it
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise InvalidCheckpoint(path, f"no training state to resume: lacks {', '.join(missing)}")


def _resumable(path: Path) -> bool:
    try:
        _check_resumable(path)
    except UserError:
        return False
    return True

"""Networks: seed models (Keras tutorial reproductions) and a configurable CNN, built from `model.net`."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import UserError
from cnnlab.models.network import Network

__all__ = ["Network", "build_model", "check_input_shape"]

_GIVEN = ("in_shape", "num_classes")  # passed by build_model from the data, never written in config


def _fmt(shape: Sequence[int]) -> str:
    return "×".join(str(int(s)) for s in shape)


def build_model(net_cfg: DictConfig, in_shape: Sequence[int], num_classes: int) -> Network:
    """Instantiate `model.net` (a `_target_` leaf) for images of in_shape (C, H, W)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    target = OmegaConf.select(net_cfg, "_target_")
    if not target:
        raise UserError("model.net has no _target_ (pick a model, e.g. model=seed_mnist_cnn)")
    module, _, name = str(target).rpartition(".")
    try:  # not hydra's get_object, which logs its own multi-line error first
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise UserError(f"model.net._target_ {target!r} cannot be imported ({e})") from None
    if not (isinstance(cls, type) and issubclass(cls, Network)):  # the task relies on its contract
        raise UserError(f"model.net._target_ {target!r} is not a cnnlab network (a cnnlab.models.Network)")
    # check options first: an unknown or missing one is the user's; Hydra's message buries it in a traceback
    params = inspect.signature(cls).parameters
    options = [str(k) for k in net_cfg if not str(k).startswith("_")]
    valid = [p for p in params if p not in _GIVEN]
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    bad = [k for k in options if k in _GIVEN or (k not in params and not open_ended)]
    missing = [p for p in valid if params[p].default is inspect.Parameter.empty and p not in options
               and params[p].kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    if bad or missing:
        what = "; ".join([f"unknown option(s) {', '.join(bad)}"] * bool(bad)
                         + [f"missing {', '.join(missing)}"] * bool(missing))
        given = " (in_shape and num_classes come from the data)" if set(bad) & set(_GIVEN) else ""
        raise UserError(f"model.net ({cls.__name__}): {what}; valid options: {', '.join(valid)}{given}")
    try:  # _convert_="all": constructors take plain lists, not ListConfig
        return instantiate(net_cfg, in_shape=tuple(int(s) for s in in_shape),
                           num_classes=int(num_classes), _convert_="all")
    except InstantiationException as e:
        if isinstance(e.__cause__, UserError):  # e.g. images too small for the number of poolings
            raise e.__cause__ from None
        raise


def check_input_shape(model_in_shape: Sequence[int], data_in_shape: Sequence[int]) -> None:
    """A trained model only accepts the image size it was built for."""
    if tuple(model_in_shape) != tuple(data_in_shape):
        raise UserError(f"model was built for {_fmt(model_in_shape)} inputs, data has "
                        f"{_fmt(data_in_shape)} images (prepare the data at that size or retrain)")

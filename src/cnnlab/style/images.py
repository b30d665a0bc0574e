"""Style-transfer images: named samples or files → float RGB tensors in [0, 1]; resizing, YUV, PNG output.

Named samples need no download: `skimage:<name>` reads the images scikit-image ships inside its wheel,
`mpl:grace_hopper` the JPEG in matplotlib's sample data.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cnnlab.errors import UserError
from cnnlab.images import chw, fit_long_side, open_image, to_mode
from cnnlab.io import atomic_path

log = logging.getLogger(__name__)

# In the scikit-image wheel itself (skimage/data/*.png|jpg); other names in skimage.data are fetched by pooch.
SKIMAGE_BUNDLED = ("astronaut", "brick", "camera", "cell", "chelsea", "coffee", "coins", "colorwheel",
                   "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
                   "microaneurysms", "moon", "page", "retina", "rocket", "text")
MPL_SAMPLES = {"grace_hopper": "grace_hopper.jpg"}

# BT.601 RGB → YUV (rows: Y, U, V); luminance-only transfer swaps Y and keeps the content's U, V.
_YUV = torch.tensor([[0.299, 0.587, 0.114], [-0.14713, -0.28886, 0.436], [0.615, -0.51499, -0.10001]])


def image_name(spec: str) -> str:
    """Short name for folder names and panel titles: `skimage:gravel` → gravel, `a/b/photo.jpg` → photo."""
    return spec.split(":", 1)[1] if spec.startswith(("skimage:", "mpl:")) else Path(spec).stem


def _sample(spec: str) -> Image.Image:
    kind, name = spec.split(":", 1)
    if kind == "mpl":
        if name not in MPL_SAMPLES:
            raise UserError(f"unknown image {spec!r}; matplotlib samples: "
                            f"{', '.join('mpl:' + k for k in MPL_SAMPLES)}")
        from matplotlib import cbook

        return open_image(cbook.get_sample_data(MPL_SAMPLES[name], asfileobj=False), 3)
    if name not in SKIMAGE_BUNDLED:
        raise UserError(f"image {spec!r} is not one of scikit-image's bundled samples (others need a "
                        f"download): {', '.join(SKIMAGE_BUNDLED)}")
    try:
        import skimage.data
    except ImportError:
        raise UserError(f"image {spec!r} needs scikit-image: `pip install scikit-image`") from None
    arr = np.asarray(getattr(skimage.data, name)())
    return to_mode(Image.fromarray(arr.astype(np.uint8) * 255 if arr.dtype == bool else arr), 3)


def load_image(spec: str, long_side: int, min_side: int) -> tuple[torch.Tensor, str]:
    """`spec` → (float [3, H, W] in [0, 1] with max(H, W) = long_side, sha256 of the decoded pixels).
    The short side is raised to `min_side` when the aspect ratio would make it smaller."""
    if spec.startswith(("skimage:", "mpl:")):
        im = _sample(spec)
    elif ":" in spec and not Path(spec).expanduser().is_file():  # most likely a mistyped sample
        raise UserError(f"image {spec} does not exist (samples: skimage:<name> or mpl:grace_hopper)")
    else:
        im = open_image(spec, 3)
    digest = hashlib.sha256(im.tobytes()).hexdigest()
    w, h = im.size
    im = fit_long_side(im, long_side, min_side)
    if min(w, h) < min_side:
        log.warning("%s is only %d×%d px: upscaled to %d×%d, expect a blurry result", spec, w, h, *im.size)
    return torch.from_numpy(chw(im).astype(np.float32) / 255), digest


def resize(img: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """[3, H, W] or [N, 3, H, W] → new (H, W), antialiased when shrinking."""
    if tuple(img.shape[-2:]) == tuple(hw):
        return img
    x = img if img.dim() == 4 else img[None]
    down = hw[0] < x.shape[-2] or hw[1] < x.shape[-1]
    x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=down)
    return x if img.dim() == 4 else x[0]


def rgb_to_yuv(img: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,...jhw->...ihw", _YUV.to(img), img)


def yuv_to_rgb(img: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,...jhw->...ihw", torch.linalg.inv(_YUV).to(img), img)


def luminance(img: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """Y of `img` as a 3-channel grey image; with `like`, Y's mean and std matched to `like`'s luminance
    (Gatys et al. 2016, "Preserving color in neural artistic style transfer": else a dark style image darkens
    the content)."""
    y = rgb_to_yuv(img)[..., :1, :, :]
    if like is not None:
        ref = rgb_to_yuv(like)[..., :1, :, :]
        y = (y - y.mean()) / y.std().clamp(min=1e-6) * ref.std() + ref.mean()
    return y.clamp(0, 1).expand(*img.shape).contiguous()


def with_chroma(result: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Luminance of `result`, colour (U, V) of `content`."""
    yuv = torch.cat([rgb_to_yuv(result)[..., :1, :, :], rgb_to_yuv(content)[..., 1:, :, :]], dim=-3)
    return yuv_to_rgb(yuv).clamp(0, 1)


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [0, 1] → [H, W, 3] uint8."""
    return (img.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def save_png(img: torch.Tensor, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(img)).save(tmp, format="PNG", optimize=True)

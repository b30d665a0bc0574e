"""The `fast` net: airbench's ideas (arXiv 2404.00498) in cnnlab's terms — a frozen patch-whitening first conv
set from the training data, then residual-free conv groups (conv → max pool → BN → GELU → conv → BN → GELU)
with identity-initialised convs and weightless BN, global max pool, a bias-free linear head with scaled-down
logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import UserError
from cnnlab.models.network import Network


def whitening_weights(images: torch.Tensor, k: int, eps: float) -> torch.Tensor:
    """k×k patches of normalised images [N,C,H,W] → conv weights [2·C·k·k, C, k, k]: the eigenvectors of the
    patch covariance scaled by 1/sqrt(eigenvalue + eps), and their negatives (so a following ReLU/GELU keeps
    both signs)."""
    c = images.shape[1]
    patches = F.unfold(images.double(), k).transpose(1, 2).reshape(-1, c * k * k)  # [N·L, C·k·k]
    cov = patches.T @ patches / len(patches)  # uncentred: the data is already normalised to mean ~0
    evals, evecs = torch.linalg.eigh(cov)  # ascending; float64 so tiny eigenvalues stay exact
    w = (evecs.T / (evals.clamp_min(0) + eps).sqrt()[:, None]).flip(0).reshape(-1, c, k, k)  # largest first
    return torch.cat([w, -w]).float()


class Conv(nn.Conv2d):
    def __init__(self, c_in: int, c_out: int, identity_init: bool):
        super().__init__(c_in, c_out, 3, padding="same", bias=False)  # BN follows: a bias would be redundant
        # the first c_in filters pass their input through: a deep net starts near a shallow one
        if identity_init:
            torch.nn.init.dirac_(self.weight.data[: min(c_in, c_out)])


class BN(nn.BatchNorm2d):
    """BN with the scale fixed at 1 (only the shift learns); running stats ← (1-m)·old + m·batch."""

    def __init__(self, width: int, momentum: float):
        super().__init__(width, eps=1e-12, momentum=momentum)
        self.weight.requires_grad_(False)


class FastNet(Network):
    """Args: widths per conv group (each halves the size); whiten_kernel: patch side of the whitening layer
    (2·C·k² output channels); whiten_eps: eigenvalue floor; init_images: training images the whitening is
    estimated from; bn_momentum in torch's convention; logit_scale multiplies the logits (airbench: 1/9)."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, widths: list[int] = (64, 256, 256),
                 whiten_kernel: int = 2, whiten_eps: float = 5e-4, init_images: int = 5000,
                 bn_momentum: float = 0.4, identity_init: bool = True, logit_scale: float = 1 / 9):
        super().__init__()
        c, h, w = in_shape
        if min(h, w) - whiten_kernel + 1 < 2 ** len(widths):
            raise UserError(f"model=fast: {h}×{w} images are too small for {len(widths)} conv groups "
                            f"(each halves the size); use fewer model.net.widths")
        self.in_shape = tuple(in_shape)
        self.whiten_kernel, self.whiten_eps, self.init_images = whiten_kernel, whiten_eps, init_images
        self.whiten = nn.Conv2d(c, 2 * c * whiten_kernel ** 2, whiten_kernel)  # valid conv: 32 → 31 px
        self.whiten.weight.requires_grad_(False)  # frozen: set from the data by init_from_data, never trained
        layers, c_in = [nn.GELU()], self.whiten.out_channels
        for width in widths:
            layers += [Conv(c_in, width, identity_init), nn.MaxPool2d(2), BN(width, bn_momentum), nn.GELU(),
                       Conv(width, width, identity_init), BN(width, bn_momentum), nn.GELU()]
            c_in = width
        self.body = nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.head = nn.Linear(c_in, num_classes, bias=False)
        self.logit_scale = logit_scale

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """Set the whitening conv from normalised float training images [N,C,H,W] (the first init_images)."""
        x = images[: self.init_images].to(self.whiten.weight.device)
        self.whiten.weight.copy_(whitening_weights(x, self.whiten_kernel, self.whiten_eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.whiten(x))) * self.logit_scale

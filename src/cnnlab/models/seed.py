"""PyTorch reproductions of the tutorial notebooks' Keras models, parameter for parameter.

Keras flattens NHWC and PyTorch NCHW: same counts, other weight order (no Keras weights are ever loaded).
"""

from __future__ import annotations

from torch import nn

from cnnlab.models.builder import pooled_size, same_conv
from cnnlab.models.network import Network


def keras_init(model: nn.Module) -> nn.Module:
    """glorot_uniform weights, zero biases: Keras' defaults, so training behaves like the notebooks
    (PyTorch's default bound 1/√fan_in is √3× smaller when fan_in = fan_out, and biases are not zero)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)  # conv fans k·k·in / k·k·out, as Keras computes them
            nn.init.zeros_(m.bias)
    return model


def _mlp_head(flat: int, hidden: int, num_classes: int, dropout: float = 0.0) -> list[nn.Module]:
    drop = lambda: [nn.Dropout(dropout)] if dropout else []  # noqa: E731 — a fresh module per position
    return [nn.Flatten(), *drop(), nn.Linear(flat, hidden), nn.ReLU(), *drop(),
            nn.Linear(hidden, num_classes)]


class SeedMLP(nn.Sequential, Network):
    """Flatten → Dense 512 relu → Dense 512 relu → Dense 10 (669,706 params on 1×28×28)."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, hidden: int = 512):
        c, h, w = in_shape
        super().__init__(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        self.in_shape = tuple(in_shape)
        keras_init(self)


class SeedMnistCNN(nn.Sequential, Network):
    """Conv 32 → pool → Conv 64 → pool → Dense 64 → Dense 10, 3×3 "same" (220,234 params on 1×28×28)."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, hidden: int = 64):
        h, w = pooled_size(in_shape, 2, type(self).__name__)
        super().__init__(*same_conv(in_shape[0], 32, 3), nn.ReLU(), nn.MaxPool2d(2),
                         *same_conv(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
                         *_mlp_head(64 * h * w, hidden, num_classes))
        self.in_shape = tuple(in_shape)
        keras_init(self)


class SeedCifarCNN(nn.Sequential, Network):
    """Conv 16/32/64 "same", each + pool 2 → Dropout → Dense 500 → Dropout → Dense 10.

    541,094 params on 3×32×32 with kernel_size=3; 528,054 with 2 (padded right/bottom, as in Keras).
    """

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, kernel_size: int = 3,
                 hidden: int = 500, dropout: float = 0.3):
        h, w = pooled_size(in_shape, 3, type(self).__name__)
        layers, c = [], in_shape[0]
        for width in (16, 32, 64):
            layers += [*same_conv(c, width, kernel_size), nn.ReLU(), nn.MaxPool2d(2)]
            c = width
        # the notebook's first Dropout sits before Flatten; _mlp_head puts it right after: same tensor values
        super().__init__(*layers, *_mlp_head(64 * h * w, hidden, num_classes, dropout))
        self.in_shape = tuple(in_shape)
        keras_init(self)

"""The contract between a network and the training task: what a `model.net._target_` MAY provide, with the
default every other network gets. The task (`cnnlab.tasks.classifier.Classifier`) and its callbacks call these
members directly; a network overrides only what it does differently."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


class Network(nn.Module):
    """Base class of every cnnlab network: images [B,C,H,W] → logits [B, num_classes].

    May provide (defaults below):
      expects_unit_range: forward() takes images in [0, 1] and normalises them itself (pretrained backbones,
          with their own statistics); otherwise images come normalised with the training data's mean/std.
      init_images, init_from_data: weights set from training images before a fresh fit (airbench's whitening).
      param_groups: the optimizer's parameter groups, each at a multiple of optimizer.lr.
      stages: the parts `GradualUnfreeze` freezes before training and opens one at a time.
    """

    expects_unit_range: ClassVar[bool] = False
    init_images: int = 0  # training images init_from_data is given; 0: it is never called

    def init_from_data(self, images: torch.Tensor) -> None:
        """Set weights from the first `init_images` training images, normalised as forward() takes them.
        Called once per fresh fit, before the optimizer is built; a resumed fit then loads its checkpoint."""

    def param_groups(self) -> list[dict]:
        """[{"params": [...], "lr_scale": s}, ...]: each group learns at s × optimizer.lr. Frozen parameters
        stay out (GradualUnfreeze adds them when it opens them)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr_scale": 1.0}]

    def stages(self) -> list[nn.Module]:
        """The parts opened one at a time in gradual fine-tuning, first to open first; [] for none."""
        return []

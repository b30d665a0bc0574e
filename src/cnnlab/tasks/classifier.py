"""The one LightningModule for image classification. It rebuilds its network from the saved `net` config leaf,
so a checkpoint alone is enough for `evaluate` and `predict`."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torchmetrics.classification import MulticlassAccuracy

from cnnlab.data.augment import alternating_flip, augment, image_bits, normalize
from cnnlab.errors import UserError
from cnnlab.models import build_model


class InferenceNet(torch.nn.Module):
    """What is logged to MLflow: float images in [0, 1], [B,C,H,W] → logits (normalisation included)."""

    def __init__(self, net: torch.nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


class Classifier(pl.LightningModule):
    def __init__(
        self,
        net: dict,
        in_shape: tuple[int, int, int],
        num_classes: int,
        class_names: list[str],
        mean: list[float],
        std: list[float],
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,  # params → optimizer (_partial_)
        scheduler: Callable | None = None,  # (optimizer, total_steps, steps_per_epoch) → LR scheduler
        label_smoothing: float = 0.0,
        crop_padding: int = 0,
        flip: bool = False,
        alternate_flip: bool = False,  # flip each image every other epoch instead of at random (needs flip)
        cutout: int = 0,
        channels_last: bool = False,
        compile: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)  # the stage logs the full config
        self.net = build_model(OmegaConf.create(net), tuple(in_shape), num_classes)
        if getattr(self.net, "expects_unit_range", False):  # pretrained nets normalise with their own stats
            mean, std = [0.0] * in_shape[0], [1.0] * in_shape[0]
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        # compile a wrapper, not the registered module, so checkpoint keys stay free of `_orig_mod.`
        self._forward = torch.compile(self.net) if compile else self.net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float images → logits."""
        return self._forward(x)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = batch
        training = self._trainer is not None and self._trainer.training  # `.trainer` raises when detached
        alternate = training and self.hparams.flip and self.hparams.get("alternate_flip", False)
        bits = image_bits(x) if alternate else None  # from the uint8 pixels, before they change
        x = normalize(x, self.mean, self.std)  # uint8 → float on the device: 4× less host→device traffic
        if training:
            if alternate:
                x = alternating_flip(x, bits, self.current_epoch)
            x = augment(x, self.hparams.crop_padding, self.hparams.flip and not alternate, self.hparams.cutout)
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def setup(self, stage: str) -> None:
        # Nets initialised from data (model=fast's whitening layer): a fresh fit only, before the optimizer is
        # built; on resume the checkpoint's weights are loaded over this afterwards.
        dm = self._trainer.datamodule if self._trainer is not None else None
        if stage == "fit" and hasattr(self.net, "init_from_data") and dm is not None and "train" in dm.splits:
            images = dm.splits["train"].images[: getattr(self.net, "init_images", 5000)]
            self.net.init_from_data(normalize(images.to(self.mean.device), self.mean, self.std))

    def on_train_epoch_start(self) -> None:
        # Dropout/augmentation randomness as a function of (seed, epoch, rank): a run resumed from an epoch
        # boundary draws exactly what the uninterrupted run drew (Lightning does not checkpoint RNG state).
        torch.manual_seed(self.hparams.seed * 100_003 + self.current_epoch * 1009 + self.global_rank)
        self._sums = torch.zeros(2, device=self.device)  # Σ loss·n, Σ correct over this epoch
        self._seen = 0

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        # Epoch sums on the device, logged once at the last batch: a self.log per step costs ~1 ms of Python
        # on a 2-core CPU (~10% of a batch-32 step) and a .item() per step would stall a GPU.
        with torch.no_grad():
            self._sums += torch.stack([loss.detach() * len(y), (logits.argmax(1) == y).sum()])
        self._seen += len(y)
        last = batch_idx == self.trainer.num_training_batches - 1
        # Checked on the running sum every 32 steps, not per step: reading a GPU value each step stalls the
        # pipeline. Checkpoints are only written at epoch end, after this check, so none holds a NaN.
        if (batch_idx % 32 == 31 or last) and not torch.isfinite(self._sums[0]):
            raise UserError(f"non-finite training loss in epoch {self.current_epoch} (by step {self.global_step}); "
                            "lower optimizer.lr or set trainer.gradient_clip_val (the last good checkpoint is kept)")
        if last:
            loss_sum, correct = self._sums / self._seen  # every rank sees the same count, so mean of means is exact
            self.log("train/loss", loss_sum, on_step=False, on_epoch=True, sync_dist=True)
            self.log("train/acc", correct, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True, batch_size=len(y))
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=len(y))

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self(batch[0]).float()

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise RuntimeError("Classifier built without an optimizer (loaded for inference only)")
        if hasattr(self.net, "param_groups"):  # discriminative learning rates (pretrained backbones)
            lr = self.optimizer_factory.keywords["lr"]
            params = [{"params": g["params"], "lr": lr * g["lr_scale"]} for g in self.net.param_groups()]
        else:
            params = [p for p in self.parameters() if p.requires_grad]  # frozen parts stay out (and can join later)
        opt = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return opt
        total = int(self.trainer.estimated_stepping_batches)
        sched = self.scheduler_factory(opt, total_steps=total,
                                       steps_per_epoch=math.ceil(total / max(1, self.trainer.max_epochs)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

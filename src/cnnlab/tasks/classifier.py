"""The one LightningModule for image classification. It rebuilds its network from the saved `net` config leaf,
so a checkpoint alone is enough for `evaluate` and `predict`. What it asks of the network is written down in
`cnnlab.models.Network`."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torchmetrics.classification import MulticlassAccuracy

from cnnlab.data.augment import alternating_flip, augment, image_bits, normalize
from cnnlab.data.loader import PreparedData, epoch_seed
from cnnlab.errors import UserError
from cnnlab.models import Network, build_model
from cnnlab.models.pretrained import weights_from_checkpoint
from cnnlab.tasks.checkpoint import InvalidCheckpoint, check_fit, load_weights, read_checkpoint


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
    """Cross-entropy training of a `cnnlab.models.Network` on prepared uint8 batches, normalised and augmented
    on the device; `from_config` builds one to train, `load` one from its checkpoint alone."""

    def __init__(
        self,
        net: dict,  # the `model.net` leaf: rebuilt from the checkpoint alone
        in_shape: tuple[int, int, int],
        num_classes: int,
        class_names: list[str],
        mean: list[float],  # the training data's per-channel statistics on the [0, 1] scale
        std: list[float],
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,  # (groups, lr=) → optimizer, _partial_
        lr: float | None = None,  # optimizer.lr; each of the net's param_groups learns at a multiple of it
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
        # training-only settings stay out of the checkpoint's hyper-parameters: the stage logs the full config
        self.save_hyperparameters(ignore=["optimizer", "lr", "scheduler"], logger=False)
        self.net: Network = build_model(OmegaConf.create(net), tuple(in_shape), num_classes)
        if self.net.expects_unit_range:  # pretrained nets normalise with their own stats
            mean, std = [0.0] * in_shape[0], [1.0] * in_shape[0]
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        # compile a wrapper, not the registered module, so checkpoint keys stay free of `_orig_mod.`
        self._forward = torch.compile(self.net) if compile else self.net
        self.optimizer_factory, self.lr, self.scheduler_factory = optimizer, lr, scheduler
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self._saved = False  # a checkpoint passed the finite-weights check in this process

    @classmethod
    def from_config(cls, cfg: DictConfig, manifest: dict) -> Classifier:
        """A model to train: the `model.net`, `optimizer`, `scheduler`, `train` and `seed` settings of a
        composed config, for the prepared data its manifest describes."""
        t, aug = cfg.train, cfg.train.augment
        if cfg.optimizer.get("lr") is None:
            raise UserError("optimizer.lr is not set: the learning rate every parameter group is scaled from")
        return cls(net=OmegaConf.to_container(cfg.model.net, resolve=True),
                   in_shape=tuple(manifest["image_shape"]), num_classes=manifest["num_classes"],
                   class_names=manifest["classes"], mean=manifest["mean"], std=manifest["std"],
                   optimizer=instantiate(cfg.optimizer), lr=float(cfg.optimizer.lr),
                   scheduler=instantiate(cfg.scheduler) if cfg.scheduler else None,
                   label_smoothing=t.label_smoothing, crop_padding=aug.crop_padding, flip=aug.flip,
                   alternate_flip=aug.alternate_flip, cutout=aug.cutout, channels_last=t.channels_last,
                   compile=t.compile, seed=cfg.seed)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Classifier:
        """A cnnlab checkpoint → the model in eval mode on `device`; anything else is one UserError line."""
        path = Path(path)
        return cls.from_checkpoint(path, read_checkpoint(path)).to(device).eval()

    @classmethod
    def from_checkpoint(cls, path: Path, ckpt: dict) -> Classifier:
        """A checkpoint read by `read_checkpoint` → the model it holds (training mode, on the CPU)."""
        try:  # the checkpoint holds every weight (strict load below): no pretrained file or download needed
            with weights_from_checkpoint():
                with torch.device("meta"):  # shapes first: the file's weights, not its hparams, set the size
                    check_fit(path, cls(**ckpt["hyper_parameters"]), ckpt)
                model = cls(**ckpt["hyper_parameters"])
        except TypeError as e:  # hyper-parameters this version does not take
            raise InvalidCheckpoint(path, f"hyper-parameters do not fit cnnlab's Classifier: {e}") from None
        except UserError as e:  # e.g. a _target_ this version does not have
            raise InvalidCheckpoint(path, f"cannot rebuild its network: {e}") from None
        load_weights(model, ckpt)
        return model

    def inference_net(self) -> InferenceNet:
        """The plain module logged to MLflow: float images in [0, 1] → logits."""
        return InferenceNet(self.net, self.mean.tolist(), self.std.tolist())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float images (`preprocess`) → logits."""
        return self._forward(x)

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images [B,C,H,W] as files hold them → float logits on the CPU: the interface every model
        source of `cnnlab evaluate`/`predict` has (an exported .onnx, a registered model)."""
        return self(self.preprocess(images.to(self.device))).float().cpu()

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on the model's device, uint8 [B,C,H,W] (0–255) or float (0–1) → the input forward() takes:
        normalised as in training, without augmentation."""
        return self._layout(normalize(x, self.mean, self.std))

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = batch
        if self._trainer is None or not self._trainer.training:  # `.trainer` raises when detached
            return self.preprocess(x), y
        alternate = self.hparams.flip and self.hparams.get("alternate_flip", False)
        bits = image_bits(x) if alternate else None  # from the uint8 pixels, before they change
        x = normalize(x, self.mean, self.std)  # uint8 → float on the device: 4× less host→device traffic
        if alternate:
            x = alternating_flip(x, bits, self.current_epoch)
        x = augment(x, self.hparams.crop_padding, self.hparams.flip and not alternate, self.hparams.cutout)
        return self._layout(x), y

    def setup(self, stage: str) -> None:
        # Nets initialised from data (model=fast's whitening layer): a fresh fit only, before the optimizer is
        # built; on resume the checkpoint's weights are loaded over this afterwards.
        dm = self._trainer.datamodule if self._trainer is not None else None
        n = self.net.init_images
        if stage == "fit" and n and isinstance(dm, PreparedData) and "train" in dm.splits:
            # a seeded sample, not the first n: a prepared image folder is stored class by class, so the first
            # 5,000 of CIFAR-10's JPEGs are two classes; every DDP rank draws the same sample
            train = dm.splits["train"].images
            pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.hparams.seed))[:n]
            images = train[pick.to(train.device)].to(self.mean.device)
            self.net.init_from_data(normalize(images, self.mean, self.std))

    def on_train_epoch_start(self) -> None:
        # Dropout/augmentation randomness as a function of (seed, epoch, rank): a run resumed from an epoch
        # boundary draws exactly what the uninterrupted run drew (Lightning does not checkpoint RNG state).
        torch.manual_seed(epoch_seed(self.hparams.seed, self.current_epoch, self.global_rank, stride=1009))
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
        # pipeline. The last step's update is seen by validation, and on_save_checkpoint refuses NaN weights.
        if (batch_idx % 32 == 31 or last) and self._any_rank(not torch.isfinite(self._sums[0])):
            raise UserError(f"non-finite training loss in {self._when('by step')}; "
                            f"lower optimizer.lr or set trainer.gradient_clip_val ({self._kept()})")
        if last:
            # every rank sees the same count, so the mean of the ranks' means is exact
            loss_sum, correct = self._sums / self._seen
            # logger=False here and below: EpochHistory logs each epoch's row, at step = the epoch number
            self.log("train/loss", loss_sum, on_step=False, on_epoch=True, sync_dist=True, logger=False)
            self.log("train/acc", correct, on_step=False, on_epoch=True, sync_dist=True, logger=False)
        return loss

    def _when(self, step: str) -> str:
        """Where training is, for messages: epochs count from 1, as in history.csv, the log and MLflow."""
        return f"epoch {self.current_epoch + 1} ({step} {self.global_step})"

    def _any_rank(self, bad: bool | torch.Tensor) -> bool:
        """True on every rank when any rank says so: a rank that raised alone would leave the others waiting
        in their next collective forever."""
        return self.trainer.strategy.reduce_boolean_decision(bool(bad), all=False)

    def _kept(self) -> str:
        """What a stopped run leaves behind: only a file this fit saved, or resumed from, counts."""
        trainer = self._trainer
        if trainer is None:
            return "no checkpoint was saved"
        cb = trainer.checkpoint_callback  # last_model_path is set before writing: it names the previous file
        path = (cb.last_model_path if cb is not None else "") or trainer.ckpt_path
        if path and (self._saved or trainer.ckpt_path) and Path(path).is_file():
            return f"the last good checkpoint {path} is kept"
        return "no checkpoint was saved"

    def on_validation_epoch_start(self) -> None:
        self._val_finite = torch.ones((), dtype=torch.bool, device=self.device)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self._val_finite &= torch.isfinite(loss)  # read once per validation, not per batch (a GPU sync each)
        self.val_acc(logits, y)
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(y), logger=False)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=len(y), logger=False)

    def on_validation_epoch_end(self) -> None:
        # A blow-up in the last training steps passes the loss check above (the loss is taken before the step
        # that breaks the weights); validation is the first to see it, before any checkpoint of that epoch.
        if self._any_rank(not self._val_finite):
            raise UserError(f"non-finite validation loss in {self._when('step')}: the weights diverged; "
                            f"lower optimizer.lr or set trainer.gradient_clip_val ({self._kept()})")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Runs after the callbacks' hooks, so it checks what is written (the EMA's weights included). Every
        # rank holds the same weights, so every rank decides alike without a collective.
        floats = [v for v in checkpoint["state_dict"].values() if v.is_floating_point()]
        if floats and not torch.stack([torch.isfinite(v).all() for v in floats]).all():
            raise UserError(f"non-finite weights in {self._when('step')}: not saving them; lower "
                            f"optimizer.lr or set trainer.gradient_clip_val ({self._kept()})")
        self._saved = True

    def configure_optimizers(self):
        if self.optimizer_factory is None or self.lr is None:
            raise RuntimeError("Classifier built without an optimizer and lr (loaded for inference only)")
        # discriminative learning rates (pretrained backbones); one group at lr for every other net
        groups = [{"params": g["params"], "lr": self.lr * g["lr_scale"]} for g in self.net.param_groups()]
        opt = self.optimizer_factory(groups, lr=self.lr)
        if self.scheduler_factory is None:
            return opt
        total = int(self.trainer.estimated_stepping_batches)
        sched = self.scheduler_factory(opt, total_steps=total,
                                       steps_per_epoch=math.ceil(total / max(1, self.trainer.max_epochs)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

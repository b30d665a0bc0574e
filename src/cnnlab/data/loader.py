"""In-memory batch path: prepared uint8 tensors are indexed a batch at a time (no Dataset/collate, no
per-sample Python), then converted and augmented as whole batches on the training device (`augment.py`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from cnnlab.data.prepared import Split, load_split
from cnnlab.errors import UserError


def epoch_seed(seed: int, epoch: int, rank: int = 0, stride: int = 1) -> int:
    """The seed of one epoch's randomness on one rank, a function of (seed, epoch, rank) only: Lightning
    does not checkpoint RNG state, so a run resumed at an epoch boundary re-derives what the uninterrupted
    run drew. The data order uses stride 1, the training RNG (augmentation, dropout) 1009: the values every
    run was tuned and benchmarked with."""
    return seed * 100_003 + epoch * stride + rank


class TensorBatches:
    """Iterable of (images uint8 [B,C,H,W], labels int64 [B]) over this rank's shard.

    Training order is a function of (seed, epoch) only, so a resumed run sees the same batches as an
    uninterrupted one. Under DDP every rank draws the same permutation and takes a disjoint stride of it
    (the tail that does not divide evenly is dropped so all ranks run the same number of steps).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool,
                 seed: int = 0, epoch: Callable[[], int] = lambda: 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False):
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, epoch
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last

    def _indices(self) -> torch.Tensor:
        n = len(self.labels)
        if not self.shuffle:  # evaluation: every sample exactly once across ranks (metrics sync the counts)
            return torch.arange(self.rank, n, self.world_size)
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch()))
        perm = torch.randperm(n, generator=g)
        return perm[: n - n % self.world_size][self.rank:: self.world_size]

    def __len__(self) -> int:
        n = len(self.labels)
        per_rank = n // self.world_size if self.shuffle else len(range(self.rank, n, self.world_size))
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self._indices().to(self.images.device)
        for i in range(len(self)):
            b = idx[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.images[b], self.labels[b]


def subset_per_class(s: Split, k: int, seed: int) -> Split:
    """k training images per class, the same ones for every model and run seed (low-data studies)."""
    perm = torch.randperm(len(s.labels), generator=torch.Generator().manual_seed(seed))
    labels = s.labels[perm]
    keep = torch.cat([perm[labels == c][:k] for c in labels.unique()]).sort().values
    return Split(s.images[keep], s.labels[keep])


class PreparedData(pl.LightningDataModule):
    """Prepared splits held in memory; on a CUDA device the whole uint8 dataset is moved there once."""

    def __init__(self, data_dir: str, batch_size: int, eval_batch_size: int, seed: int = 0,
                 drop_last: bool = False, device_resident: bool = True, per_class: int | None = None,
                 subset_seed: int = 0):
        super().__init__()
        self.data_dir, self.batch_size, self.eval_batch_size = data_dir, batch_size, eval_batch_size
        self.seed, self.drop_last, self.device_resident = seed, drop_last, device_resident
        self.per_class, self.subset_seed = per_class, subset_seed
        self.splits: dict[str, Split] = {}

    @classmethod
    def from_config(cls, train: DictConfig, data_dir: str, seed: int) -> PreparedData:
        """The `train:` section's batch settings over the prepared data in data_dir."""
        return cls(str(data_dir), train.batch_size, train.eval_batch_size, seed=seed,
                   drop_last=train.drop_last, per_class=train.per_class, subset_seed=train.subset_seed)

    def setup(self, stage: str | None = None) -> None:
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        for name in ("train", "val") if stage == "fit" else ("test",):
            if name not in self.splits:
                s = load_split(self.data_dir, name)
                if not len(s.labels):  # an empty val split trains "fine": NaN val metrics and no best.ckpt
                    raise UserError(f"{self.data_dir}/{name}.safetensors holds no images; run `cnnlab "
                                    "prepare` again (data.val_size and data.test_size must be at least 1)")
                if name == "train" and self.per_class:
                    s = subset_per_class(s, self.per_class, self.subset_seed)
                if self.device_resident and device.type == "cuda":
                    s = Split(s.images.to(device), s.labels.to(device))
                self.splits[name] = s

    def _batches(self, split: str, train: bool) -> TensorBatches:
        world = self.trainer.world_size if self.trainer else 1
        size = self.batch_size if train else self.eval_batch_size
        if size % world:
            raise UserError(f"batch size {size} is not divisible by the {world} processes (it is the global "
                            "batch)")
        s = self.splits[split]
        return TensorBatches(s.images, s.labels, size // world, shuffle=train, seed=self.seed,
                             epoch=lambda: self.trainer.current_epoch if self.trainer else 0,
                             rank=self.trainer.global_rank if self.trainer else 0, world_size=world,
                             drop_last=self.drop_last and train)

    def train_dataloader(self) -> TensorBatches:
        return self._batches("train", True)

    def val_dataloader(self) -> TensorBatches:
        return self._batches("val", False)
